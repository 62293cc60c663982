"""The long fault campaigns: workers SIGKILLed at random through a paced stream, and a soak.

  kills  N workers in one group (3), a paced stream of several minutes, K SIGKILLs of random
         workers at random moments, each worker started again by its supervisor
         (stream/processes.Supervisor): events lost and applied twice (both must be 0, checked
         against the model's own steps over each user's events), and per kill the seconds until
         the killed worker was ready again (its tables restored from their changelogs).
  soak   one worker, a paced stream for M minutes: per 5 minutes, the worker's RSS, the p99 of
         produce -> update latency (the upper bound of its Prometheus bucket) and the largest
         consumer lag seen, which should stay flat.

Each starts its own single-node broker on free ports (or uses KAFKA_BOOTSTRAP), on the demo
world's catalog (240 items) and an untrained model of the default size (the cost per event of a
trained one). The fault tools are tests/integration/campaign.py's.
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "bench"))

from campaign import (  # noqa: E402
    Changelog,
    PacedStream,
    kill_at_random,
    reference,
    supervise_until,
    tally,
    wait_ready,
)
from throughput import git_sha, machine, untrained_checkpoint  # noqa: E402

from schemas import BehaviorEvent, EventType  # noqa: E402
from stream.demo_data import demo_catalog, demo_events  # noqa: E402
from stream.local_kafka import LocalKafka, free_port  # noqa: E402
from stream.processes import Supervisor, get_json  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.topics import ensure_topics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    kills = commands.add_parser("kills", help="workers SIGKILLed at random through a stream")
    kills.add_argument("--workers", type=int, default=3)
    kills.add_argument("--kills", type=int, default=10)
    kills.add_argument("--minutes", type=float, default=5.0, help="of paced stream (5)")
    kills.add_argument("--rate", type=float, default=200.0, help="events per second (200)")
    kills.add_argument("--seed", type=int, default=0)
    soak = commands.add_parser("soak", help="one worker under a paced stream for a long time")
    soak.add_argument("--minutes", type=float, default=30.0)
    soak.add_argument(
        "--rate",
        type=float,
        default=700.0,
        help="events per second (700: half of what one worker sustained beside this load "
        "generator on the 2-core box, about 1,350)",
    )
    soak.add_argument("--window", type=float, default=300.0, help="seconds per row (300)")
    for command in (kills, soak):
        command.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="currents-faults-"))
    kafka, cluster = None, Settings.from_env().cluster  # KAFKA_BOOTSTRAP, CURRENTS_KAFKA_*
    if not os.environ.get("KAFKA_BOOTSTRAP"):
        kafka = LocalKafka(work / "kafka", partitions=8, heap="1g")
        kafka.start()
        cluster = kafka.cluster
    try:
        catalog = demo_catalog()
        settings = Settings(
            bootstrap=cluster.bootstrap, kafka=cluster.security, app_id=f"faults-{args.command}",
            partitions=8,
            checkpoint=untrained_checkpoint(work / "model.pt", catalog),
            encoder_cache=work / "vectors", data_dir=work / "worker-0",
            web_port=free_port(), session_timeout=10, commit_interval=0.5,
        )  # fmt: skip
        ensure_topics(settings)
        _produce_catalog(settings, catalog)
        run = run_kills if args.command == "kills" else run_soak
        result = {
            "sha": git_sha(),
            "machine": machine(),
            **vars(args),
            **run(settings, catalog, args, work),
        }
        result.pop("json")
        print(json.dumps(result, indent=2, default=str))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
    finally:
        if kafka is not None:
            kafka.stop()


def run_kills(settings: Settings, catalog, args, work: Path) -> dict:
    rng = random.Random(args.seed)
    total = int(args.rate * args.minutes * 60)
    users = max(1, total // 60)
    events = demo_events(catalog, users, max(1, total // users), args.seed)
    expected = reference(settings.checkpoint, catalog, work / "vectors", events)
    workers = [
        TimedSupervisor(
            settings.model_copy(update={"web_port": free_port(), "data_dir": work / f"worker-{n}"}),
            work / f"worker-{n}.log",
            say=print,
        )  # fmt: skip
        for n in range(args.workers)
    ]
    ready_after: list[float] = []
    try:
        wait_ready(workers, 300)
        stream = PacedStream(settings.cluster, settings.events_topic, _keyed(events), args.rate)
        stream.start()
        kill_at_random(workers, args.kills, args.minutes * 60, rng)
        stream.finish()
        ended = time.monotonic()
        changelog = Changelog(settings, settings.checkpoint)
        caught_up = supervise_until(workers, lambda: changelog.counts() == expected.counts, 600)
        catch_up = time.monotonic() - ended
        found = tally(changelog, expected)
        changelog.close()
        wait_ready(workers, 300)  # the last restarted ones too: their time to ready is measured
        ready_after = [seconds for worker in workers for seconds in worker.ready_after]
    finally:
        for worker in workers:
            worker.stop()
    return {
        "events": len(events),
        "users": len(expected.counts),
        "restarts": sum(w.restarts for w in workers),
        **found,
        "caught_up": caught_up,
        "catch_up_after_stream_s": round(catch_up, 1),
        "ready_after_restart_s": [round(s, 1) for s in ready_after],
    }


def soak_records(catalog, total: int, users: int = 2000, seed: int = 0):
    """`total` events of random users and items, made as they are sent (millions of them)."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(total):
        event = BehaviorEvent(
            event_id=f"soak-{n}", user_id=f"user-{rng.randrange(users)}",
            item_id=rng.choice(catalog).item_id, event_type=rng.choice(list(EventType)),
            timestamp=start + timedelta(milliseconds=n),
        )  # fmt: skip
        yield event.user_id.encode(), event.model_dump_json().encode()


def run_soak(settings: Settings, catalog, args, work: Path) -> dict:
    total = int(args.rate * args.minutes * 60)
    worker = Supervisor(settings, work / "worker-0.log", say=print)
    rows = []
    try:
        _wait_ready(worker, 300)
        records = soak_records(catalog, total)
        stream = PacedStream(settings.cluster, settings.events_topic, records, args.rate)
        stream.start()
        url = f"http://127.0.0.1:{settings.web_port}/metrics"
        before, lag, window_started = _latency_buckets(url), 0.0, time.monotonic()
        while stream.is_alive():
            time.sleep(5)
            lag = max(lag, _lag(url))
            if time.monotonic() - window_started >= args.window:
                after = _latency_buckets(url)
                rows.append({
                    "minute": round((time.monotonic() - stream.started_at) / 60, 1),
                    "rss_mib": _rss_mib(worker.process.pid),
                    "p99_ms_at_most": _p99_bound(before, after),
                    "max_lag": lag,
                    "restarts": worker.restarts,
                })  # fmt: skip
                print(rows[-1], flush=True)
                before, lag, window_started = after, 0.0, time.monotonic()
        stream.finish()
    finally:
        worker.stop()
    return {"events": total, "windows": rows}


class TimedSupervisor(Supervisor):
    """A supervisor that also measures, after each exit, the seconds until its worker is ready
    again (started, item matrix loaded, tables restored from their changelogs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ready_after: list[float] = []
        self.exited_at: float | None = None

    def check(self) -> None:
        if self.exited_at is None and self.process.poll() is not None:
            self.exited_at = time.monotonic()
        super().check()
        if self.exited_at is not None and self.due is None:
            url = f"http://127.0.0.1:{self.settings.web_port}/health"
            if (get_json(url, timeout=1)[1] or {}).get("ready"):
                self.ready_after.append(time.monotonic() - self.exited_at)
                self.exited_at = None


def _produce_catalog(settings: Settings, catalog) -> None:
    producer = settings.cluster.producer(acks="all", linger_ms=5)
    for item in catalog:
        producer.send(
            settings.catalog_topic, key=item.item_id.encode(), value=item.model_dump_json().encode()
        )
    producer.flush()
    producer.close()


def _keyed(events) -> list[tuple[bytes, bytes]]:
    return [(e.user_id.encode(), e.model_dump_json().encode()) for e in events]


def _wait_ready(worker: Supervisor, timeout: float) -> None:
    url = f"http://127.0.0.1:{worker.settings.web_port}/health"
    deadline = time.monotonic() + timeout
    while not (get_json(url)[1] or {}).get("ready"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker not ready after {timeout:.0f} s; log {worker.log_file}")
        worker.check()
        time.sleep(0.5)


def _metric_samples(url: str) -> list:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return []
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def _latency_buckets(url: str) -> dict[float, float]:
    return {
        float(s.labels["le"]): s.value
        for s in _metric_samples(url)
        if s.name == "currents_update_latency_seconds_bucket"
    }


def _p99_bound(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound (ms) of the bucket holding the window's 99th percentile."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    if not counts or counts[-1][1] == 0:
        return None
    for le, cumulative in counts:
        if cumulative >= 0.99 * counts[-1][1]:
            return le * 1000
    return None


def _lag(url: str) -> float:
    return sum(s.value for s in _metric_samples(url) if s.name == "currents_consumer_lag")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return round(int(line.split()[1]) / 1024)


if __name__ == "__main__":
    main()
