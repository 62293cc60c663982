"""Per-partition progress of the events agent, and the repair of holes in what Faust delivers.

Faust 0.15 can hand an agent a partition's records with a hole in it: records fetched around a
seek (a worker start, a rebalance) are dropped from its pipeline and counted as done by its gap
tracking, then committed without ever being processed. So the agent keeps, in a table next to
the user states, the next offset it expects per partition, and reads a missing range straight
from Kafka before the batch that skipped it. Processing stays idempotent (user records know what
they applied), so reading a range twice is harmless; skipping one never happens.

A hole is seen when a later record arrives. When Faust drops a partition's last records (seen
at restarts: records fetched as its recovery ends are dropped, e.g. by its read-offset check
while it seeks to the committed offsets), none does: `LostTails` spots such a partition, and the
worker asks Faust to fetch it again from where the agent stands.
"""

from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

__all__ = ["HoleReader", "LostTails", "Record", "holes"]


@dataclass(frozen=True)
class Record:
    """One events-topic record, as Faust delivered it or as read to fill a hole."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int
    timestamp: float  # seconds


def holes(expected: int, offsets: list[int]) -> tuple[list[tuple[int, int]], int]:
    """The ranges [start, end) missing from a partition's offsets in a batch, given the next
    offset expected before it; and the next offset expected after it."""
    missing = []
    for offset in offsets:
        if offset > expected:
            missing.append((expected, offset))
        expected = max(expected, offset + 1)
    return missing, expected


class LostTails:
    """Partitions whose records Faust fetched but never delivered to the agent.

    Checked once a second by the worker: a partition is lost when the next offset the agent
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

    Blocking kafka-python calls: run them in a worker thread.
    """

    def __init__(self, bootstrap: str, topic: str, group: str):
        self.topic, self.group = topic, group
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
        )
        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap)

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
        while self._consumer.position(tp) < end:
            polled = self._consumer.poll(timeout_ms=1000).get(tp, [])
            records += [
                Record(r.key, r.value, partition, r.offset, r.timestamp / 1000)
                for r in polled
                if r.offset < end
            ]
        return records

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()
