"""Start and stop worker processes; used by `currents demo` and the integration tests."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from stream.settings import Settings

__all__ = ["Supervisor", "get_json", "spawn_worker", "terminate", "wait_for"]


def spawn_worker(settings: Settings, log_file: Path, loglevel: str = "info") -> subprocess.Popen:
    """`currents worker` in its own process and session, configured only through its env."""
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    env.pop("KAFKA_BOOTSTRAP", None)  # settings.bootstrap already says where the cluster is
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "stream", "worker", "--loglevel", loglevel],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


class Supervisor:
    """A worker process started again whenever it exits, as systemd or Kubernetes would do.

    A worker exits by design when it cannot go on without losing events (code 70: a failed
    output, Kafka away past the outage budget); the next one resumes where it left off. A
    worker that dies young is started again after a growing delay (1 s doubling to 60 s).
    """

    def __init__(self, settings: Settings, log_file: Path, loglevel: str = "info", say=print):
        self.settings, self.log_file, self.loglevel, self.say = settings, log_file, loglevel, say
        self.restarts, self.delay, self.due = 0, 1.0, None
        self.process = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        self.started = time.monotonic()
        return spawn_worker(self.settings, self.log_file, self.loglevel)

    def check(self) -> None:
        """Call often: notices an exit, and starts the worker again once its delay is over."""
        if self.due is None and self.process.poll() is not None:
            if time.monotonic() - self.started > 30:
                self.delay = 1.0  # it had been running: not a crash loop
            self.due = time.monotonic() + self.delay
            self.say(
                f"The worker exited with code {self.process.returncode}; starting it again in "
                f"{self.delay:.0f} s (log {self.log_file})"
            )
            self.delay = min(60.0, self.delay * 2)
        if self.due is not None and time.monotonic() >= self.due:
            self.due, self.restarts = None, self.restarts + 1
            self.process = self._spawn()
            self.say(f"Started the worker again (pid {self.process.pid})")

    def stop(self, timeout: float = 30.0) -> int:
        self.due = None
        return terminate(self.process, timeout)


def terminate(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM (Faust then commits and closes its tables), SIGKILL after `timeout`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def get_json(url: str, timeout: float = 5.0, token: str | None = None) -> tuple[int, dict | None]:
    """GET a JSON document (with a bearer token if given); (status, body), or (0, None) when
    nothing answers."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read())
        except ValueError:
            return error.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, None


def wait_for(
    condition,
    timeout: float,
    interval: float = 0.5,
    what: str = "condition",
    process: subprocess.Popen | None = None,
):
    """Poll `condition()` until it returns a truthy value; return it, or raise TimeoutError.

    With `process`, fail at once when that process exits instead of waiting out the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met after {timeout:.0f}s")
        time.sleep(interval)
