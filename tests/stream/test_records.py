import struct

import pytest

from schemas import DeadLetter, ErrorKind, EventType, InvalidMessage
from stream.demo_data import demo_catalog, demo_events
from stream.records import UserRecord, dead_letter, decode_keyed_event

EVENT = demo_events(demo_catalog(), users=1, events_per_user=1)[0]
RAW = EVENT.model_dump_json().encode()


def test_keyed_event_decodes_when_key_is_its_user():
    assert decode_keyed_event(EVENT.user_id.encode(), RAW) == EVENT


@pytest.mark.parametrize(
    ("key", "kind"), [(None, ErrorKind.MISSING_KEY), (b"user-9", ErrorKind.KEY_MISMATCH)]
)
def test_event_under_another_key_is_rejected(key, kind):
    with pytest.raises(InvalidMessage) as caught:
        decode_keyed_event(key, RAW)
    assert caught.value.kind is kind


def test_dead_letter_keeps_original_bytes_and_reason():
    error = InvalidMessage(ErrorKind.UNDECODABLE, "not UTF-8 JSON: boom")
    letter = DeadLetter.model_validate_json(dead_letter(error, b"k", b"\xff\x00", "events", 3, 42))
    assert (letter.payload, letter.key, letter.partition, letter.offset) == (
        b"\xff\x00",
        b"k",
        3,
        42,
    )
    assert letter.error_kind is ErrorKind.UNDECODABLE and letter.reason == "not UTF-8 JSON: boom"


def test_user_record_round_trips_and_recognises_redeliveries():
    record = UserRecord(
        state=b"CUST\x01state-bytes",
        prev_interest=bytes(range(16)),
        partition=3,
        offset=41,
        recent_events=("e-1", "é-2"),
        recent_items=("i-9",),
        recent_types=(EventType.VIEW, EventType.CLICK),
    )
    assert UserRecord.from_bytes(record.to_bytes()) == record
    assert record.covers(3, 41) and record.covers(3, 0)
    assert not record.covers(3, 42) and not record.covers(2, 41)


def test_user_records_of_format_1_are_still_read():
    # format 1 (before 2026-12): every id prefixed with its UTF-8 length, u16 little endian
    def ids(*values: str) -> bytes:
        return b"".join(struct.pack("<H", len(v.encode())) + v.encode() for v in values)

    events, items, prev, state = ids("e-1", "é-2"), ids("i-9"), bytes(range(16)), b"CUST..."
    head = struct.pack(
        "<4sHiqHHII", b"CUUR", 1, 3, 41, len(events), len(items), len(prev), len(state)
    )
    record = UserRecord.from_bytes(head + events + items + prev + state)
    assert record == UserRecord(state, prev, 3, 41, ("e-1", "é-2"), ("i-9",))


def test_user_records_of_format_2_are_still_read_without_types():
    # format 2 (before explanations): ids joined by NUL, no event types
    events, items, prev, state = b"e-1\0e-2", b"i-9\0i-8", bytes(range(16)), b"CUST.."
    head = struct.pack(
        "<4sHiqHHII", b"CUUR", 2, 3, 41, len(events), len(items), len(prev), len(state)
    )
    record = UserRecord.from_bytes(head + events + items + prev + state)
    assert record == UserRecord(state, prev, 3, 41, ("e-1", "e-2"), ("i-9", "i-8"), ())


def test_truncated_or_foreign_user_records_are_refused():
    raw = UserRecord(state=b"x" * 40, prev_interest=b"").to_bytes()
    with pytest.raises(ValueError, match="truncated"):
        UserRecord.from_bytes(raw[:-1])
    with pytest.raises(ValueError, match="not a user record"):
        UserRecord.from_bytes(b"JUNK" + raw[4:])
