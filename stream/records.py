"""Plain functions the agents call per record, and the per-user record kept in the state table.

Tests call all of them without Kafka.
"""

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from schemas import (
    BehaviorEvent,
    DeadLetter,
    ErrorKind,
    EventType,
    InvalidMessage,
    UserErasure,
    decode_events_message,
)

__all__ = ["Record", "UserRecord", "dead_letter", "decode_keyed_event"]

RECENT = 32  # event ids kept for duplicate detection, item ids kept out of recommendations


class Record(NamedTuple):
    """One events-topic record, as the worker takes it from Kafka or reads it to fill a hole.
    A named tuple: one is made per record fetched, at a third of a frozen dataclass's cost."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int
    timestamp: float  # seconds


def decode_keyed_event(key: bytes | None, value: bytes) -> BehaviorEvent | UserErasure:
    """Decode an events-topic record (an event, or an erasure of the user) and check it is
    keyed by its user.

    A record keyed by anything else sits in another user's partition, so its user's state
    would be split across workers: it is rejected rather than applied out of order.
    """
    event = decode_events_message(value)
    if key is None:
        raise InvalidMessage(ErrorKind.MISSING_KEY, "events must be keyed by user_id")
    if key != event.user_id.encode():
        raise InvalidMessage(
            ErrorKind.KEY_MISMATCH,
            f"record key {key[:64]!r} is not the event's user_id {event.user_id!r}",
        )
    return event


def dead_letter(
    error: InvalidMessage, key: bytes | None, value: bytes, topic: str, partition: int, offset: int
) -> bytes:
    """The dead-letter record for a rejected record, as JSON bytes."""
    return (
        DeadLetter(
            payload=b"" if value is None else bytes(value),  # a tombstone is rejected too
            key=None if key is None else bytes(key),
            source_topic=topic,
            partition=partition,
            offset=offset,
            error_kind=error.kind,
            reason=error.reason[:4096],
            failed_at=datetime.now(UTC),
        )
        .model_dump_json()
        .encode()
    )


_RECORD_MAGIC = b"CUUR"
# 3: also the recent events' types, one byte each (explanations cite them);
# 2: ids joined by NUL, which no id contains (schemas.common.Identifier: no control characters);
# 1: ids each prefixed with its length, ten times slower to read and write. All are read.
_RECORD_FORMAT = 3
_RECORD_HEAD = struct.Struct("<4sHiqHHII")  # magic, format, partition, offset, byte lengths
_TYPES_HEAD = struct.Struct("<H")  # format 3: byte length of the types, after the head
_TYPES = tuple(EventType)  # a type's byte is its position here


@dataclass(frozen=True)
class UserRecord:
    """What the state table holds for one user: the model state and what it has applied.

    `partition`/`offset` is the last events-topic record applied and `recent_events` the ids of
    the last events, so a record redelivered after a crash, or a producer's retried duplicate,
    is recognised and never applied twice. `prev_interest` is the interest vector before the
    last update, so that update can be re-published identically after a crash. `recent_items`
    and `recent_types` belong to the last of `recent_events` (a record written before types
    were kept has fewer types than events: they align at the newest end).
    """

    state: bytes  # model.state wire format (carries the model version)
    prev_interest: bytes  # float32 (d,)
    partition: int = -1
    offset: int = -1
    recent_events: tuple[str, ...] = field(default=())
    recent_items: tuple[str, ...] = field(default=())
    recent_types: tuple[EventType, ...] = field(default=())

    def covers(self, partition: int, offset: int) -> bool:
        """Whether the record at `partition`/`offset` was already applied (a redelivery)."""
        return partition == self.partition and offset <= self.offset

    def to_bytes(self) -> bytes:
        events, items = "\0".join(self.recent_events), "\0".join(self.recent_items)
        events, items = events.encode(), items.encode()
        types = bytes(_TYPES.index(kind) for kind in self.recent_types)
        head = _RECORD_HEAD.pack(
            _RECORD_MAGIC, _RECORD_FORMAT, self.partition, self.offset,
            len(events), len(items), len(self.prev_interest), len(self.state),
        )  # fmt: skip
        tail = events + items + self.prev_interest + self.state
        return head + _TYPES_HEAD.pack(len(types)) + types + tail

    @classmethod
    def from_bytes(cls, raw: bytes) -> "UserRecord":
        magic, fmt, partition, offset, n_events, n_items, n_prev, n_state = (
            _RECORD_HEAD.unpack_from(raw)
        )
        if magic != _RECORD_MAGIC or fmt not in (1, 2, _RECORD_FORMAT):
            raise ValueError(f"not a user record of format 1 to {_RECORD_FORMAT}")
        ids = _unpack_v1 if fmt == 1 else _split
        at = _RECORD_HEAD.size
        types: tuple[EventType, ...] = ()
        if fmt >= 3:
            (n_types,) = _TYPES_HEAD.unpack_from(raw, at)
            at += _TYPES_HEAD.size
            types = tuple(_TYPES[code] for code in raw[at : at + n_types])
            at += n_types
        events = ids(raw[at : at + n_events])
        at += n_events
        items = ids(raw[at : at + n_items])
        at += n_items
        prev = raw[at : at + n_prev]
        state = raw[at + n_prev : at + n_prev + n_state]
        if len(state) != n_state:
            raise ValueError("user record is truncated")
        return cls(state, prev, partition, offset, events, items, types)


def _split(raw: bytes) -> tuple[str, ...]:
    return tuple(raw.decode().split("\0")) if raw else ()


def _unpack_v1(raw: bytes) -> tuple[str, ...]:
    out, at = [], 0
    while at < len(raw):
        (size,) = struct.unpack_from("<H", raw, at)
        out.append(raw[at + 2 : at + 2 + size].decode())
        at += 2 + size
    return tuple(out)
