"""`currents demo`: the whole pipeline on one machine, from an empty folder to live output.

It starts the local broker (unless KAFKA_BOOTSTRAP names a cluster), creates the topics, starts
a worker, streams a small sample (and two bad records, to show dead-lettering), prints what the
worker's table holds, and keeps running until Ctrl-C, then stops worker and broker in order.
"""

import os
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaProducer

from schemas import BehaviorEvent, EventType
from stream.processes import get_json, spawn_worker, terminate, wait_for
from stream.settings import Settings
from stream.topics import ensure_topics

__all__ = ["run_demo", "sample_events"]


def sample_events(users: int, events: int, seed: int = 7) -> list[BehaviorEvent]:
    """A reproducible stream of clicks and views, in time order."""
    rng = random.Random(seed)
    start = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
    return [
        BehaviorEvent(
            event_id=f"demo-{n}",
            user_id=f"user-{rng.randrange(users)}",
            item_id=f"item-{rng.randrange(50)}",
            event_type=rng.choice(list(EventType)),
            timestamp=start + timedelta(seconds=30 * n),
        )
        for n in range(events)
    ]


def run_demo(kafka_dir: Path, port: int, users: int, events: int) -> int:
    """Run until Ctrl-C (SIGINT) or SIGTERM; a local broker started here is stopped here."""
    from stream.cli import local_kafka

    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))

    kafka = None
    settings = Settings.from_env()
    if not (os.environ.get("KAFKA_BOOTSTRAP") or os.environ.get("CURRENTS_BOOTSTRAP")):
        kafka = local_kafka(kafka_dir, port)
        settings = Settings.from_env(bootstrap=kafka.bootstrap)
        if kafka.status()[0]["serving"]:
            kafka = None  # started by `currents kafka start`: leave it running
    worker = None
    try:
        if kafka is not None:
            print(f"Starting Kafka at {kafka.bootstrap} (data in {kafka_dir}) ...", flush=True)
            kafka.start()
        ensure_topics(settings)
        worker_log = kafka_dir.parent / "worker.log"
        print(f"Starting a worker (log: {worker_log}) ...", flush=True)
        worker = spawn_worker(settings, worker_log)
        base = f"http://{settings.web_host}:{settings.web_port}"
        wait_for(lambda: get_json(f"{base}/health")[0] == 200 or stopping, 120, what="worker up")

        stream = sample_events(users, events)
        _produce(settings, stream)
        print(f"Produced {len(stream)} events and 2 bad records to {settings.events_topic}.")
        print("Per-user activity, read from the worker's RocksDB table over HTTP:")
        for user in sorted({event.user_id for event in stream}):
            expected = sum(event.user_id == user for event in stream)
            summary = wait_for(
                lambda user=user, expected=expected: _activity(base, user, expected) or stopping,
                60,
                what=f"{user} processed",
            )
            if stopping:
                break
            print(f"  {user}: {summary['events']} events, last item {summary['last_item_id']}")
        print(f"The 2 bad records are in {settings.dead_letter_topic}, each with its reason.")
        print("Running; press Ctrl-C to stop.", flush=True)
        while not stopping and worker.poll() is None:
            time.sleep(0.5)
    finally:
        print("Stopping ...", flush=True)
        if worker is not None:
            terminate(worker)
        if kafka is not None:
            kafka.stop()
        print("Stopped.")
    return 0


def _produce(settings: Settings, stream: list[BehaviorEvent]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    for event in stream:
        value = event.model_dump_json().encode()
        producer.send(settings.events_topic, key=event.user_id.encode(), value=value)
    producer.send(settings.events_topic, key=b"user-0", value=b"\xff not json")
    producer.send(settings.events_topic, key=b"user-0", value=b'{"event_id": "x"}')
    producer.flush()
    producer.close()


def _activity(base: str, user: str, expected: int) -> dict | None:
    status, body = get_json(f"{base}/users/{user}/activity")
    return body if status == 200 and body["events"] >= expected else None
