"""The fault campaign's tools: a paced stream that outlives broker outages, and the exact check.

A stream's outcome is checked against the model itself, not against another worker's run: per
user, the state the model reaches stepping the user's events once each, in order. The worker's
states are read from the state table's changelog (the last record per user), which is what a
restarted or new worker restores, whichever worker wrote it. Used by tests/integration and by
bench/faults.py.
"""

import threading
import time
from dataclasses import dataclass, field

import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from model.checkpoint import load_checkpoint
from model.config import event_type_index
from model.encoder import ItemEncoder, item_text
from stream.processes import get_json
from stream.produce import paced
from stream.records import RECENT, UserRecord
from stream.topics import changelog_topic, state_tables


class PacedStream(threading.Thread):
    """Sends records at a rate, riding out broker outages (the producer retries for up to
    `patience` seconds); `sent` counts those sent so far, `errors` holds failed deliveries."""

    def __init__(self, bootstrap: str, topic: str, records, rate: float, patience: float = 600):
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.records, self.rate = bootstrap, topic, records, rate
        self.patience_ms = int(patience * 1000)
        self.sent, self.errors, self.started_at = 0, [], None

    def run(self) -> None:
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
            delivery_timeout_ms=self.patience_ms, max_block_ms=self.patience_ms,
        )  # fmt: skip
        self.started_at = time.monotonic()
        for key, value in paced(self.records, self.rate):
            producer.send(self.topic, key=key, value=value).add_errback(self.errors.append)
            self.sent += 1
        producer.flush()
        producer.close()

    def elapsed(self) -> float:
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def finish(self, timeout: float = 600) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        assert not self.errors, f"{len(self.errors)} events not produced: {self.errors[:3]}"


@dataclass
class Reference:
    """Per user, what an uninterrupted run ends with: events applied, their ids, the state."""

    counts: dict[str, int]
    recent: dict[str, tuple[str, ...]]
    states: dict[str, object] = field(repr=False)


def reference(checkpoint_path, catalog, cache, events) -> Reference:
    """Step the model over every user's events once, in order (model/interest.py): users' k-th
    events in one batch, as rows are independent."""
    ckpt = load_checkpoint(checkpoint_path)
    ids = [item.item_id for item in catalog]
    texts = [item_text(i.item_id, i.title, i.description, i.categories) for i in catalog]
    vectors = torch.from_numpy(ItemEncoder(ckpt.encoder_name, cache).encode(texts))
    by_user: dict[str, list] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    users = list(by_user)
    row_of = {item_id: n for n, item_id in enumerate(ids)}
    with torch.inference_mode():
        reps = ckpt.model.item_representations(vectors, ckpt.warm_indices(ids))
        states = ckpt.model.fresh_state(len(users))
        for k in range(max(map(len, by_user.values()))):
            rows = [n for n, user in enumerate(users) if len(by_user[user]) > k]
            kth = [by_user[users[n]][k] for n in rows]
            index = torch.tensor(rows)
            stepped, _ = ckpt.model.step(
                states.select(index),
                reps[[row_of[e.item_id] for e in kth]],
                torch.tensor([event_type_index(e.event_type.value) for e in kth]),
                torch.tensor([e.timestamp.timestamp() for e in kth], dtype=torch.float64),
            )
            states.assign(index, stepped)
    return Reference(
        counts={user: len(mine) for user, mine in by_user.items()},
        recent={user: tuple(e.event_id for e in mine)[-RECENT:] for user, mine in by_user.items()},
        states={user: states.select(torch.tensor([n])) for n, user in enumerate(users)},
    )


def changelog_states(settings, checkpoint_path, timeout: float = 30) -> dict[str, UserRecord]:
    """The last record of every user in the state table's changelog."""
    version = load_checkpoint(checkpoint_path).version
    topic = changelog_topic(settings.app_id, state_tables(version)[0])
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(partitions)
        latest: dict[str, UserRecord] = {}
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, "the changelog could not be read to its end"
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    latest[record.key.decode()] = UserRecord.from_bytes(record.value)
        return latest
    finally:
        consumer.close()


def applied_counts(settings, checkpoint_path) -> dict[str, int]:
    """Events applied per user, as the changelog has them."""
    ckpt = load_checkpoint(checkpoint_path)
    return {
        user: int(ckpt.decode_states([record.state]).count[0])
        for user, record in changelog_states(settings, checkpoint_path).items()
    }


def wait_until_exact(
    settings, checkpoint_path, expected: Reference, timeout: float, what: str, alive=None
):
    """Wait until the changelog has every user's events applied (or `alive()` is false); then
    check it is exact."""
    deadline = time.monotonic() + timeout
    while True:
        counts = applied_counts(settings, checkpoint_path)
        if counts == expected.counts or time.monotonic() > deadline:
            break
        if alive is not None and not alive():
            break
        time.sleep(1.0)
    assert_exact(settings, checkpoint_path, expected, what)


def assert_exact(settings, checkpoint_path, expected: Reference, what: str) -> None:
    """Every event applied exactly once, in order, with the states of an uninterrupted run."""
    ckpt = load_checkpoint(checkpoint_path)
    got = changelog_states(settings, checkpoint_path)
    counts = {user: int(ckpt.decode_states([r.state]).count[0]) for user, r in got.items()}
    lost = sum(max(0, n - counts.get(user, 0)) for user, n in expected.counts.items())
    twice = sum(max(0, n - expected.counts.get(user, 0)) for user, n in counts.items())
    assert (lost, twice) == (0, 0), f"{what}: {lost} events lost, {twice} applied twice"
    for user, record in got.items():
        assert record.recent_events == expected.recent[user], f"{what}: {user} out of order"
        state, want = ckpt.decode_states([record.state]), expected.states[user]
        for name in ("h", "c", "ring", "interest"):
            assert torch.allclose(getattr(state, name), getattr(want, name), atol=1e-5), name


def kill_at_random(workers, kills: int, duration: float, rng, say=print) -> list[float]:
    """SIGKILL a random worker at `kills` random moments within `duration` seconds, keeping
    every worker's supervisor (stream/processes.Supervisor) checked meanwhile, so that each
    killed worker is started again; returns the moments of the kills."""
    moments = sorted(rng.uniform(0.05, 0.95) * duration for _ in range(kills))
    started = time.monotonic()
    for moment in [*moments, duration]:
        while time.monotonic() - started < moment:
            for worker in workers:
                worker.check()
            time.sleep(0.1)
        victim = rng.choice(workers)
        if moment < duration and victim.process.poll() is None:
            victim.process.kill()
            say(f"{time.monotonic() - started:6.1f} s: SIGKILL worker pid {victim.process.pid}")
    return moments


def wait_ready(workers, timeout: float = 180) -> None:
    """Wait until every supervised worker serves `ready` (item matrix loaded, tables restored)."""

    def ready(worker) -> bool:
        url = f"http://127.0.0.1:{worker.settings.web_port}/health"
        return bool((get_json(url, timeout=2)[1] or {}).get("ready"))

    assert supervise_until(workers, lambda: all(map(ready, workers)), timeout), "not ready"


def supervise_until(workers, condition, timeout: float) -> bool:
    """Keep the supervisors checked until `condition()` holds (True) or `timeout` (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            worker.check()
        if condition():
            return True
        time.sleep(1.0)
    return False
