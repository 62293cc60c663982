"""Helpers for integration tests: sample behaviour, Kafka I/O, worker processes."""

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from schemas import BehaviorEvent, EventType
from stream.processes import get_json, spawn_worker, terminate, wait_for


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


def produce(bootstrap: str, topic: str, records) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def consume(bootstrap: str, topic: str, until, timeout: float = 120.0) -> list:
    """Read `topic` from the beginning until `until(records)` is true; return the records."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=1000
    )
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
