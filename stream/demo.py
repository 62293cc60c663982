"""`currents demo`: the whole product on one machine, from an empty folder to live output.

It generates a demo world (a catalog in 8 categories, users whose interests drift), trains a
model on one sample of that world (once; it is kept in .currents/demo/model.pt), starts a local
broker and a worker, streams a second sample at a steady rate, and prints the live interest
updates of one drifting user, with a short explanation of what is on screen. Ctrl-C stops the
producer, the worker and the broker, in that order.
"""

import argparse
import os
import shutil
import signal
import threading
from pathlib import Path

from schemas import InterestUpdate
from stream.demo_data import demo_catalog, demo_events, describe_drift, write_demo_dataset
from stream.local_kafka import single_node
from stream.processes import Supervisor, get_json, wait_for
from stream.produce import paced, quiet_kafka_logs
from stream.settings import Settings
from stream.tail import format_update
from stream.topics import ensure_topics

__all__ = ["run_demo"]

DEMO_DIR = Path(".currents/demo")
TRAIN_SEED, STREAM_SEED = 1, 0  # the model never sees the stream it is shown


def run_demo(args: argparse.Namespace) -> int:
    """Run until Ctrl-C (SIGINT) or SIGTERM; a broker started here is stopped here."""
    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    quiet_kafka_logs()

    checkpoint = train_demo_model(args.users, args.events_per_user, args.epochs)
    settings, kafka = demo_settings(args, checkpoint)
    worker = None
    try:
        if kafka is not None:
            print(f"Starting Kafka at {kafka.bootstrap} (data in {args.kafka_dir}) ...", flush=True)
            kafka.start()
            print(f"Kafka is up (pid {kafka.nodes[0].pid()}).", flush=True)
        ensure_topics(settings)
        catalog = demo_catalog()
        events = demo_events(catalog, args.users, args.events_per_user, STREAM_SEED)
        producer = settings.cluster.producer(acks="all", linger_ms=5)
        publish_catalog(producer, settings, catalog)

        worker_log = DEMO_DIR / "worker.log"
        worker = Supervisor(settings, worker_log, say=lambda line: print(line, flush=True))
        print(
            f"Started a worker (pid {worker.process.pid}, log {worker_log}); it encodes the "
            "catalog ..."
        )
        health = f"http://{settings.web_host}:{settings.web_port}/health"
        wait_for(
            lambda: stopping.is_set() or (get_json(health)[1] or {}).get("ready"),
            300, what="worker ready", process=worker.process,
        )  # fmt: skip
        featured = f"user-{min(7, args.users - 1)}"
        print(
            walkthrough(settings, featured, describe_drift(featured, catalog, args.events_per_user))
        )

        sender = threading.Thread(
            target=stream_events,
            args=(producer, settings, events, args.rate, stopping),
            daemon=True,
        )
        sender.start()
        show_updates(settings, featured, {i.item_id: i.title for i in catalog}, stopping, worker)
        sender.join()
        producer.close()
    finally:
        print("Stopping ...", flush=True)
        if worker is not None:
            worker.stop()
        if kafka is not None:
            kafka.stop()
        print("Stopped.")
    return 0


def demo_settings(args: argparse.Namespace, checkpoint: Path) -> tuple[Settings, object]:
    """The worker's settings, and the local broker to start (None where the environment names
    a cluster); the worker's data and the local broker's start afresh on every run."""
    kafka = None
    settings = Settings.from_env(checkpoint=checkpoint, data_dir=DEMO_DIR / "worker")
    if not (os.environ.get("KAFKA_BOOTSTRAP") or os.environ.get("CURRENTS_BOOTSTRAP")):
        shutil.rmtree(args.kafka_dir, ignore_errors=True)
        kafka = single_node(args.kafka_dir, args.port)
        settings = settings.model_copy(
            update={"bootstrap": kafka.bootstrap, "kafka": kafka.client_security}
        )
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    return settings, kafka


def train_demo_model(users: int, events_per_user: int, epochs: int) -> Path:
    """Train once on a sample of the demo world the stream will not show; reuse it after,
    unless an earlier version of the model wrote it."""
    from model.checkpoint import CheckpointError, load_checkpoint
    from model.train import DataSpec, TrainConfig, train

    checkpoint = DEMO_DIR / f"model-{users}x{events_per_user}.pt"
    if checkpoint.exists():
        try:
            load_checkpoint(checkpoint)
            return checkpoint
        except CheckpointError as error:
            print(f"{error}: training the demo model again.")

    print(f"Training the demo model on {users} users x {events_per_user} events (once) ...")
    events, catalog = write_demo_dataset(DEMO_DIR / "train", users, events_per_user, TRAIN_SEED)
    cache = os.environ.get("CURRENTS_ENCODER_CACHE", ".cache/item-vectors")
    spec = DataSpec("jsonl", (str(events), str(catalog)), cache_dir=cache)
    result = train(spec, checkpoint, TrainConfig(epochs=epochs))
    print(f"Demo model: test NDCG@10 {result['test']['ndcg@10']:.3f} (model {result['version']})")
    return checkpoint


def publish_catalog(producer, settings: Settings, catalog) -> None:
    for item in catalog:
        producer.send(
            settings.catalog_topic, key=item.item_id.encode(), value=item.model_dump_json().encode()
        )
    producer.flush()


def stream_events(producer, settings: Settings, events, rate: float, stopping) -> None:
    for event in paced(events, rate):
        if stopping.is_set():
            break
        producer.send(
            settings.events_topic,
            key=event.user_id.encode(),
            value=event.model_dump_json().encode(),
        )
    producer.flush()


def show_updates(settings: Settings, user: str, titles: dict, stopping, worker) -> None:
    """Print the featured user's updates as they are published, until Ctrl-C; start the
    worker again whenever it exits."""
    consumer = settings.cluster.consumer(
        settings.updates_topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    try:
        while not stopping.is_set():
            worker.check()
            for record in consumer:
                if record.key == user.encode() and record.value is not None:
                    update = InterestUpdate.model_validate_json(record.value)
                    print(format_update(update, titles), flush=True)
                if stopping.is_set():
                    break
                worker.check()
    finally:
        consumer.close()


def walkthrough(settings: Settings, user: str, drift: str) -> str:
    web = f"http://{settings.web_host}:{settings.web_port}"
    auth = '-H "Authorization: Bearer $TOKEN" ' if settings.web_token else ""  # never its value
    return (
        f"""
What you are watching
  The demo world has 240 items in 8 categories and users whose favourite category drifts.
  For every event the worker updates that user's LSTM + attention state (kept in RocksDB) and
  publishes an interest update to {settings.updates_topic}: the user's interest over categories
  (the bars), how each moved since the user's previous update (+/-), and the recommended items.
  Below: every update of {user}. In this stream, {drift}.
  Watch the first category fade and the next one take over; the recommendations follow.
  Under each recommendation, "because you viewed/clicked ...": the user's recent events the
  model drew on most for that item (the `because` field of the update).
  Open {web}/users/{user} in a browser: a live page of {user}'s interests, their
  evolution as a chart, and the recommendations with their reasons.
  In another terminal:
    currents tail --user user-3                 another user's updates
    curl {auth}{web}/users/{user}/interests     the current view with reasons
    curl {web}/metrics                    events/s, batch sizes, latency, lag
  Press Ctrl-C to stop everything.
""".rstrip()
        + "\n"
    )
