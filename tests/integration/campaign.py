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
from kafka import TopicPartition

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

    def __init__(self, cluster, topic: str, records, rate: float, patience: float = 600):
        super().__init__(daemon=True)
        self.cluster, self.topic, self.records, self.rate = cluster, topic, records, rate
        self.patience_ms = int(patience * 1000)
        self.sent, self.errors, self.started_at = 0, [], None

    def run(self) -> None:
        producer = self.cluster.producer(
            acks="all", linger_ms=5,
            delivery_timeout_ms=self.patience_ms, max_block_ms=self.patience_ms,
            bootstrap_timeout_ms=self.patience_ms,  # it may start while the broker is away
        )  # fmt: skip
        self.started_at = time.monotonic()
        try:
            for key, value in paced(self.records, self.rate):
                producer.send(self.topic, key=key, value=value).add_errback(self.errors.append)
                self.sent += 1
            producer.flush()
        except Exception as error:  # the test fails on it, rather than waiting for nothing
            self.errors.append(error)
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


class Changelog:
    """The state table's changelog as read so far: the last record of every user. Each `read`
    goes on from where the last one stopped, so that waiting on a long stream stays cheap."""

    def __init__(self, settings, checkpoint_path):
        self.checkpoint = load_checkpoint(checkpoint_path)
        self.cluster = settings.cluster
        self.topic = changelog_topic(settings.app_id, state_tables(self.checkpoint.version)[0])
        self.consumer = None
        self.latest: dict[str, UserRecord] = {}

    def read(self, timeout: float = 120) -> dict[str, UserRecord]:
        """Every record up to the changelog's current end."""
        if self.consumer is None:
            self.consumer = self.cluster.consumer()
            partitions = self.consumer.partitions_for_topic(self.topic) or set()
            self.consumer.assign([TopicPartition(self.topic, p) for p in partitions])
            self.consumer.seek_to_beginning()
        assigned = self.consumer.assignment()
        end = self.consumer.end_offsets(list(assigned))
        deadline = time.monotonic() + timeout
        while any(self.consumer.position(tp) < end[tp] for tp in assigned):
            assert time.monotonic() < deadline, "the changelog could not be read to its end"
            for records in self.consumer.poll(timeout_ms=500).values():
                for record in records:
                    self.latest[record.key.decode()] = UserRecord.from_bytes(record.value)
        return self.latest

    def counts(self) -> dict[str, int]:
        """Events applied per user."""
        return {user: self.applied(record) for user, record in self.read().items()}

    def applied(self, record: UserRecord) -> int:
        return int(self.checkpoint.decode_states([record.state]).count[0])

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()


def wait_until_exact(
    settings, checkpoint_path, expected: Reference, timeout: float, what: str, alive=None
) -> None:
    """Wait until the changelog has every user's events applied (or `alive()` is false); then
    check it is exact."""
    changelog = Changelog(settings, checkpoint_path)
    try:
        deadline = time.monotonic() + timeout
        while changelog.counts() != expected.counts and time.monotonic() < deadline:
            if alive is not None and not alive():
                break
            time.sleep(1.0)
        assert_exact(changelog, expected, what)
    finally:
        changelog.close()


def tally(changelog: Changelog, expected: Reference) -> dict[str, int]:
    """Against an uninterrupted run: events lost, events applied twice, users whose recent
    events or state differ."""
    got = changelog.read()
    counts = {user: changelog.applied(record) for user, record in got.items()}
    differ = 0
    for user, record in got.items():
        state = changelog.checkpoint.decode_states([record.state])
        same = record.recent_events == expected.recent.get(user) and all(
            torch.allclose(getattr(state, name), getattr(expected.states[user], name), atol=1e-5)
            for name in ("h", "c", "ring", "interest")
        )
        differ += not same
    return {
        "lost": sum(max(0, n - counts.get(user, 0)) for user, n in expected.counts.items()),
        "applied_twice": sum(max(0, n - expected.counts.get(u, 0)) for u, n in counts.items()),
        "states_differ": differ,
    }


def assert_exact(changelog: Changelog, expected: Reference, what: str) -> None:
    """Every event applied exactly once, in order, with the states of an uninterrupted run."""
    found = tally(changelog, expected)
    assert found == {"lost": 0, "applied_twice": 0, "states_differ": 0}, f"{what}: {found}"


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
