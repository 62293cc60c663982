"""Per-partition progress through the events topic, and the repair of holes in what is fetched.

`Progress` is where each partition stands: the next offset expected, the batches whose outputs
Kafka has not acknowledged yet, and the offset stored below which every output is in Kafka.
Faust writes a table value to RocksDB at once and to its changelog later, and its recovery
replays the changelog over newer local values; it also flushes the producer before committing
offsets only on a best-effort basis. So neither a locally written progress value nor the
committed offset proves a user record is durable; an acknowledged changelog record is: recovery
restores that version or a later one. Hence progress is stored only once every send of a batch
(state changelog records, updates, dead letters) is acknowledged.

Faust 0.15 can hand the worker a partition's records with a hole in it: records fetched around a
seek (a worker start, a rebalance) are dropped from its pipeline and counted as done by its gap
tracking, then committed without ever being processed. So the worker keeps, in a table next to
the user states, the next offset it expects per partition, and reads a missing range straight
from Kafka before the batch that skipped it. Processing stays idempotent (user records know what
they applied), so reading a range twice is harmless; skipping one never happens.

A hole is seen when a later record arrives. When Faust drops a partition's last records (seen
at restarts: records fetched as its recovery ends are dropped, e.g. by its read-offset check
while it seeks to the committed offsets), none does: `LostTails` spots such a partition, and the
worker asks Faust to fetch it again from where the worker stands.
"""

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError

from stream.connection import Cluster
from stream.records import Record

__all__ = ["HoleReader", "LostTails", "Progress", "ProgressStore", "holes", "span"]


def holes(expected: int, offsets: list[int]) -> tuple[list[tuple[int, int]], int]:
    """The ranges [start, end) missing from a partition's offsets in a batch, given the next
    offset expected before it; and the next offset expected after it."""
    missing = []
    for offset in offsets:
        if offset > expected:
            missing.append((expected, offset))
        expected = max(expected, offset + 1)
    return missing, expected


def span(expected: int, offsets: list[int], end: int | None = None):
    """`holes` of a partition's offsets (in order) up to `end`, exclusive, if any: offsets from
    `end` on are not processed, but every one before it is, missing or not."""
    if end is not None and offsets and offsets[-1] >= end:
        offsets = [*(offset for offset in offsets if offset < end), end]
    missing, after = holes(expected, offsets)
    if end is not None:
        after = max(expected, min(after, end))
    return missing, after


class ProgressStore(Protocol):
    """Where progress is kept: the worker's progress table. `context` is what `Progress` was
    handed with the batch (the worker's Faust event: the table write needs its partition)."""

    def get(self, partition: int) -> int | None: ...

    def set(self, partition: int, offset: int, context: object) -> None: ...


@dataclass
class _Pending:
    end: int  # the next offset after the batch
    context: object
    sends: list  # futures, done once Kafka has acknowledged the output


class Progress:
    """Each events partition's progress while this worker keeps it.

    A revocation starts a new generation: a batch that began before it records nothing (the
    partition's next owner starts from the stored progress).
    """

    def __init__(self, store: ProgressStore):
        self.store = store
        self.generation = 0
        self._expected: dict[int, int] = {}  # partition -> next offset expected
        self._delivered: dict[int, int] = {}  # partition -> offset after the last delivered
        self._pending: dict[int, list[_Pending]] = {}  # batches waiting for their sends

    def delivered(self, partition: int, offset: int) -> None:
        self._delivered[partition] = offset + 1

    def position(self, partition: int) -> int | None:
        """The next offset to process: after the last delivered, else (nothing delivered since
        the partition was assigned) the stored progress; None if neither is known."""
        done = self._delivered.get(partition)
        return self.store.get(partition) if done is None else done

    async def resume_point(
        self, partition: int, context: object, committed: Callable[[int], Awaitable[int]]
    ) -> int:
        """The next offset expected: where the last batch ended, else (first batch since the
        partition was assigned) the stored progress, else (never processed by this model
        version) the group's committed offset, stored at once as progress."""
        expected = self._expected.get(partition)
        if expected is None:
            expected = self.store.get(partition)
        if expected is None:
            expected = await committed(partition)
            self.store.set(partition, expected, context)
        return expected

    def record(self, generation: int, batches: dict[int, tuple[int, object, list]]) -> bool:
        """Note a processed batch: per partition (its next offset, context, sends). False, and
        nothing noted, when a revocation came since `generation`."""
        if generation != self.generation:
            return False
        for partition, (end, context, sends) in batches.items():
            self._expected[partition] = end
            self._pending.setdefault(partition, []).append(_Pending(end, context, sends))
        return True

    def confirm(self) -> None:
        """Store each partition's progress past the batches whose sends are all acknowledged;
        raise RuntimeError if one of them failed (the output was not written)."""
        for partition, waiting in self._pending.items():
            confirmed = None
            while waiting and all(send.done() for send in waiting[0].sends):
                confirmed = waiting.pop(0)
                for send in confirmed.sends:
                    if send.cancelled() or send.exception() is not None:
                        raise RuntimeError(
                            f"an output of events partition {partition} was not written"
                        )
            if confirmed is not None:
                self.store.set(partition, confirmed.end, confirmed.context)

    def unconfirmed(self) -> list:
        """The sends of every batch not confirmed yet."""
        return [send for waiting in self._pending.values() for b in waiting for send in b.sends]

    def revoke(self, partitions: list[int]) -> None:
        """Forget `partitions` and start a new generation."""
        self.generation += 1
        for partition in partitions:
            self._expected.pop(partition, None)
            self._pending.pop(partition, None)
            self._delivered.pop(partition, None)


class LostTails:
    """Partitions whose records Faust fetched but never delivered to the worker.

    Checked once a second by the worker: a partition is lost when the next offset the worker
    expects has not moved for `patience` checks while Faust's fetch position is past it (it
    holds nothing more to deliver). An offset reported again waits twice as long as the time
    before: fetching again can bring nothing (offsets without a record, e.g. transaction
    markers), and such a partition should not be fetched every few seconds forever.
    """

    def __init__(self, patience: int = 3):
        self.patience = patience
        self._still: dict[int, tuple[int, int]] = {}  # partition -> (expected offset, checks)
        self._reported: dict[int, tuple[int, int]] = {}  # partition -> (offset, times reported)

    def check(self, partition: int, expected: int, fetched: int) -> bool:
        """True when `partition` should be fetched again from `expected`; `fetched` is the
        consumer's position (the offset after the last record it fetched)."""
        if fetched <= expected:
            self._still.pop(partition, None)
            return False
        last, checks = self._still.get(partition, (expected, 0))
        checks = checks + 1 if last == expected else 1
        self._still[partition] = (expected, checks)
        offset, times = self._reported.get(partition, (expected, 0))
        times = times if offset == expected else 0
        if checks < self.patience << times:
            return False
        self._reported[partition] = (expected, times + 1)
        del self._still[partition]
        return True

    def forget(self) -> None:
        """Start over (after a rebalance: positions and expectations are new)."""
        self._still.clear()
        self._reported.clear()


class HoleReader:
    """Reads ranges of the events topic directly, and where a partition starts for a group.

    Blocking kafka-python calls: run them in a worker thread. Each raises a kafka-python error
    when Kafka does not answer (a read, after `patience` seconds without a record): the caller
    retries it (stream/outages.py).
    """

    def __init__(self, cluster: Cluster, topic: str, group: str, patience: float = 30.0):
        self.topic, self.group, self.patience = topic, group, patience
        timeouts = {"request_timeout_ms": 10_000, "bootstrap_timeout_ms": 10_000}
        self._consumer = cluster.consumer(group_id=None, enable_auto_commit=False, **timeouts)
        self._admin = cluster.admin(**timeouts)

    def start(self, partition: int) -> int:
        """Where the group starts reading `partition`: its committed offset, else the log start
        (the worker resets to earliest)."""
        tp = TopicPartition(self.topic, partition)
        committed = self._admin.list_group_offsets({self.group: [tp]}).get(self.group, {})
        if tp in committed and committed[tp].offset >= 0:
            return committed[tp].offset
        return self._consumer.beginning_offsets([tp])[tp]

    def read(self, partition: int, start: int, end: int) -> list[Record]:
        """Every record with start <= offset < end (fewer where retention removed some)."""
        tp = TopicPartition(self.topic, partition)
        self._consumer.assign([tp])
        self._consumer.seek(tp, max(start, self._consumer.beginning_offsets([tp])[tp]))
        records: list[Record] = []
        waiting_since = time.monotonic()
        while self._consumer.position(tp) < end:
            polled = self._consumer.poll(timeout_ms=1000).get(tp, [])
            if polled:
                waiting_since = time.monotonic()
            elif time.monotonic() - waiting_since > self.patience:
                raise KafkaTimeoutError(f"no record of {tp} for {self.patience:.0f} s")
            records += [
                Record(r.key, r.value, partition, r.offset, r.timestamp / 1000)
                for r in polled
                if r.offset < end
            ]
        return records

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()
