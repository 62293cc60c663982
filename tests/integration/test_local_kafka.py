"""The local broker and the README's run command, as a user drives them from a terminal."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka.admin import NewTopic

from stream.connection import Cluster, ConnectionFailed
from stream.local_kafka import free_port
from stream.processes import wait_for
from stream.settings import Settings


def processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line, environment or working directory contains `text`.

    Each part is read on its own: some sandboxes refuse a process's environ or cwd but still
    show its command line, which is where the broker names its data directory.
    """
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        blob = b"".join(_read_or_empty(proc / part) for part in ("cmdline", "environ", "cwd"))
        if text.encode() in blob and running(int(proc.name)):
            found.append(int(proc.name))
    return found


def _read_or_empty(path: Path) -> bytes:
    try:
        return os.readlink(path).encode() if path.name == "cwd" else path.read_bytes()
    except OSError:
        return b""


def running(pid: int) -> bool:
    """Exists and is not a zombie (an orphan's zombie lingers where nothing reaps it); where
    /proc cannot be read, whether a signal could reach it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def currents(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream", *args], capture_output=True, text=True, **kwargs
    )


def test_kafka_start_status_stop_keeps_data_across_restarts(tmp_path):
    port, data = free_port(consecutive=2), tmp_path / "kafka"
    where = ["--kafka-dir", str(data), "--port", str(port)]
    assert currents("kafka", "start", *where).returncode == 0
    try:
        status = currents("kafka", "status", *where)
        assert status.returncode == 0 and "serving" in status.stdout
        broker = int(re.search(r"pid=(\d+)", status.stdout).group(1))
        assert running(broker)
        admin = Cluster(f"127.0.0.1:{port}").admin()
        admin.create_topics([NewTopic("kept", 2, 1)])
        admin.close()
        assert currents("kafka", "stop", *where).returncode == 0
        assert currents("kafka", "status", *where).returncode == 3
        assert not running(broker)
        assert processes_mentioning(str(data)) == []

        assert currents("kafka", "start", *where).returncode == 0
        admin = Cluster(f"127.0.0.1:{port}").admin()
        assert "kept" in admin.list_topics()
        admin.close()
    finally:
        currents("kafka", "stop", *where)
    assert processes_mentioning(str(data)) == []


def test_run_command_streams_the_demo_restarts_its_worker_and_stops_all_on_ctrl_c(tmp_path):
    marker = str(tmp_path)  # in the broker's command line and the worker's environment
    env = {
        **{k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"},
        "CURRENTS_WEB_PORT": str(free_port()),
        "CURRENTS_ENCODER_CACHE": str(Path(".cache/item-vectors").absolute()),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable, "-m", "stream", "demo", "--kafka-dir", str(tmp_path / "kafka"),
        "--port", str(free_port(consecutive=2)), "--users", "12", "--events-per-user", "10",
        "--rate", "50", "--epochs", "1",
    ]  # fmt: skip
    demo = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    lines = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("user-7  "):
                break  # the header of the featured user's first live update
        output = "".join(lines)
        assert "What you are watching" in output, output
        assert "user-7 moves from" in output, output
        children = [int(pid) for pid in re.findall(r"\(pid (\d+)", output)]
        assert len(children) == 2 and all(map(running, children)), output  # broker, worker
        os.kill(children[1], signal.SIGKILL)  # the worker dies: the demo starts it again
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("Started the worker again"):
                break
        output = "".join(lines)
        assert "The worker exited with code -9; starting it again in 1 s" in output, output
        children.append(int(re.findall(r"\(pid (\d+)", output)[-1]))
        assert running(children[-1]), output
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert demo.wait(90) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
    assert "Stopped." in demo.stdout.read()
    wait_for(lambda: not any(map(running, children)), 10, what="broker and worker gone")
    assert processes_mentioning(marker) == []


def test_kafka_start_secure_accepts_only_the_user_it_prints_how_to_connect(tmp_path, monkeypatch):
    port, data = free_port(consecutive=2), tmp_path / "kafka"
    where = ["--kafka-dir", str(data), "--port", str(port)]
    started = currents("kafka", "start", "--secure", *where)
    try:
        assert started.returncode == 0, started.stderr
        password = (data / "security" / "client.password").read_text().strip()
        assert "CURRENTS_KAFKA_SASL_PASSWORD_FILE=" in started.stdout
        assert password not in started.stdout + started.stderr
        for name in [n for n in os.environ if n.startswith("CURRENTS_") or n == "KAFKA_BOOTSTRAP"]:
            monkeypatch.delenv(name)
        monkeypatch.chdir(tmp_path)
        (tmp_path / ".env").write_text((data / "client.env").read_text())  # as the output says
        settings = Settings.from_env()
        assert settings.kafka.security_protocol == "SASL_SSL"
        settings.cluster.check()  # the printed settings connect
        admin = settings.cluster.admin()
        assert admin.list_topics() == []
        admin.close()
        with pytest.raises(ConnectionFailed, match="expects another security protocol"):
            Cluster(settings.bootstrap).check()  # plaintext is refused
    finally:
        currents("kafka", "stop", *where)
