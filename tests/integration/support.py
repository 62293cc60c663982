"""Helpers for integration tests: sample behaviour, Kafka I/O, worker processes."""

import random
import threading
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rocksdict import AccessType, Options, Rdict

from schemas import BehaviorEvent, EventType
from stream.processes import get_json, spawn_worker, terminate, wait_for
from stream.produce import paced
from stream.records import UserRecord


def behaviour(catalog, users: int, events: int, seed: int = 5) -> list[BehaviorEvent]:
    rng = random.Random(seed)
    start = datetime(2024, 3, 1, tzinfo=UTC)
    return [
        BehaviorEvent(
            event_id=f"ev-{n}",
            user_id=f"user-{rng.randrange(users)}",
            item_id=rng.choice(catalog).item_id,
            event_type=rng.choice(list(EventType)),
            timestamp=start + timedelta(seconds=37 * n),
        )
        for n in range(events)
    ]


def keyed(messages, key_field: str) -> list[tuple[bytes, bytes]]:
    """(key, value) records of pydantic messages, keyed by one of their fields."""
    return [(getattr(m, key_field).encode(), m.model_dump_json().encode()) for m in messages]


def produce(cluster, topic: str, records) -> None:
    producer = cluster.producer(acks="all", linger_ms=5)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def produce_paced(cluster, topic: str, records, rate: float) -> threading.Thread:
    """Start producing `records` at `rate` a second in the background; join the thread to wait."""
    thread = threading.Thread(target=produce, args=(cluster, topic, paced(records, rate)))
    thread.start()
    return thread


def consume(cluster, topic: str, until, timeout: float = 120.0) -> list:
    """Read `topic` from the beginning until `until(records)` is true; return the records."""
    consumer = cluster.consumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=1000)
    records = []
    try:
        wait_for(lambda: records.extend(consumer) or until(records), timeout, 0.0, f"{topic}")
    finally:
        consumer.close()
    return records


class Worker:
    """A `currents worker` subprocess, stopped (or killed) by the test."""

    def __init__(self, settings, log: Path):
        self.settings, self.log = settings, log
        self.process = spawn_worker(settings, log)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}{path}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        ready = lambda: (get_json(self.url("/health"))[1] or {}).get("ready")  # noqa: E731
        wait_for(ready, timeout, what="worker ready", process=self.process)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        return terminate(self.process)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def rocksdb_records(data_dir) -> dict[bytes, UserRecord]:
    """The user-state table as the RocksDB partition stores hold it (read-only)."""
    records = {}
    databases = sorted(data_dir.glob("**/tables/user-states-*.db"))
    assert databases, f"no RocksDB partition stores under {data_dir}"
    for path in databases:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if not key.startswith(b"__faust"):
                    records[key] = UserRecord.from_bytes(value)
        finally:
            db.close()
    return records


def served(worker, users) -> dict[str, dict]:
    return {user: get_json(worker.url(f"/users/{user}/interests"))[1] for user in users}


def assert_same_views(got: dict[str, dict], expected: dict[str, dict]) -> None:
    """Equal up to float rounding: a restarted worker may order its item matrix differently,
    and views carry 6 decimals."""
    assert got.keys() == expected.keys()
    for user, view in expected.items():
        assert got[user]["events_applied"] == view["events_applied"]
        assert [r["item_id"] for r in got[user]["recommendations"]] == [
            r["item_id"] for r in view["recommendations"]
        ]
        for field in ("interests", "interest_shift"):
            assert got[user][field] == pytest.approx(view[field], abs=2e-6)


def metric(worker, name: str) -> float:
    """One unlabelled sample of the worker's Prometheus metrics (0 when it does not answer)."""
    try:
        return samples(worker, name).get((), 0.0)
    except OSError:
        return 0.0


def samples(worker, name: str) -> dict[tuple, float]:
    """The worker's Prometheus samples called `name`, by their (label, value) pairs."""
    with urllib.request.urlopen(worker.url("/metrics"), timeout=5) as response:
        text = response.read().decode()
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def events_applied(worker, users) -> dict[str, int]:
    views = served(worker, users)
    return {user: (view or {}).get("events_applied", 0) for user, view in views.items()}


def wait_until_applied(worker, counts: dict[str, int], timeout: float, what: str) -> None:
    """Wait until `worker` serves, for each user, the number of events in `counts`; else fail
    with the users that differ (served, expected) and the end of the worker's log."""
    seen: dict[str, int] = {}
    try:
        wait_for(lambda: seen.update(events_applied(worker, counts)) or seen == counts, timeout,
                 what=what)  # fmt: skip
    except TimeoutError:
        differ = {user: (seen.get(user), n) for user, n in counts.items() if seen.get(user) != n}
        raise AssertionError(f"{what}: (served, expected) {differ}\n{worker.tail()}") from None
