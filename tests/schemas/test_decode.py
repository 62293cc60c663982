import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    MAX_MESSAGE_BYTES,
    BehaviorEvent,
    ErrorKind,
    EventType,
    InvalidMessage,
    ItemDeletion,
    ItemUpsert,
    UserErasure,
    decode_catalog,
    decode_event,
    decode_events_message,
)
from schemas.common import EARLIEST_EPOCH_MS, LATEST_EPOCH_MS

VALID = {
    "event_id": "e-1",
    "user_id": "u-1",
    "item_id": "i-1",
    "event_type": "click",
    "timestamp": "2024-05-01T12:00:00+02:00",
}


def encode(**changes) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


def reject(raw: bytes) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        decode_event(raw)
    return caught.value


def test_valid_event_decodes_with_utc_timestamp():
    event = decode_event(encode(dwell_ms=1500, context={"surface": "home"}))
    assert event.event_type is EventType.CLICK
    assert event.timestamp == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert event.dwell_ms == 1500 and event.context == {"surface": "home"}


def test_event_round_trips_through_json():
    event = decode_event(encode(event_type="view"))
    assert decode_event(event.model_dump_json().encode()) == event


def test_epoch_milliseconds_decode_to_the_same_event_as_iso():
    event = decode_event(encode(timestamp=1714557600000))  # VALID's time, 10:00 UTC
    assert event == decode_event(encode())
    assert decode_event(encode(timestamp=1714557600123)).timestamp == datetime(
        2024, 5, 1, 10, 0, 0, 123000, tzinfo=UTC
    )
    assert '"timestamp":"2024-05-01T10:00:00Z"' in event.model_dump_json()


def test_epoch_millisecond_range_is_the_iso_range():
    assert decode_event(encode(timestamp=EARLIEST_EPOCH_MS)).timestamp == datetime(
        1990, 1, 1, tzinfo=UTC
    )
    assert decode_event(encode(timestamp=LATEST_EPOCH_MS - 1)).timestamp == datetime(
        2099, 12, 31, 23, 59, 59, 999000, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("timestamp", "says"),
    [
        (EARLIEST_EPOCH_MS - 1, "epoch milliseconds 631151999999 are outside [1990-01-01"),
        (LATEST_EPOCH_MS, "are outside [1990-01-01, 2100-01-01)"),
        (-1, "are outside"),
        (10**30, "are outside"),
        (1714557600000.0, "or an integer of epoch milliseconds, got float"),
        (True, "got bool"),
        (None, "got NoneType"),
        ("1714557600000", "numeric string is not a timestamp"),
        ("1714557600", "numeric string is not a timestamp"),
        ("1714557600.5", "numeric string is not a timestamp"),
        ("2024-05-01T12:00:00", "timezone"),
        ("2024-05-01", "timezone"),
        ("yesterday", "valid datetime"),
    ],
)
def test_timestamps_that_are_neither_iso_nor_epoch_ms_are_rejected(timestamp, says):
    error = reject(encode(timestamp=timestamp))
    assert error.kind is ErrorKind.SCHEMA_VIOLATION
    assert error.reason.startswith("invalid BehaviorEvent: timestamp: ")
    assert says in error.reason


@pytest.mark.parametrize(
    ("raw", "kind", "says"),
    [
        (b"\xff\xfe\x00", ErrorKind.UNDECODABLE, "not UTF-8 JSON"),
        (b"{not json", ErrorKind.UNDECODABLE, "not UTF-8 JSON"),
        (b"[1, 2]", ErrorKind.SCHEMA_VIOLATION, "Input should be an object"),
        (
            encode(dwell_ms="15"),
            ErrorKind.SCHEMA_VIOLATION,
            "dwell_ms: Input should be a valid int",
        ),
        (encode(user_id=42), ErrorKind.SCHEMA_VIOLATION, "user_id: Input should be a valid str"),
        (encode(event_type="like"), ErrorKind.SCHEMA_VIOLATION, "'click' or 'view'"),
        (encode(timestamp="1970-01-01T00:00:00Z"), ErrorKind.SCHEMA_VIOLATION, "outside"),
        (encode(timestamp="2300-01-01T00:00:00Z"), ErrorKind.SCHEMA_VIOLATION, "outside"),
        (encode(timestamp="2024-05-01T12:00:00"), ErrorKind.SCHEMA_VIOLATION, "timezone"),
        (
            encode(item_id="x" * 129),
            ErrorKind.SCHEMA_VIOLATION,
            "item_id: String should have at most 128",
        ),
        (encode(item_id=""), ErrorKind.SCHEMA_VIOLATION, "item_id: String should have at least 1"),
        (encode(user_id="a\nb"), ErrorKind.SCHEMA_VIOLATION, "user_id: String should match"),
        (encode(color="red"), ErrorKind.SCHEMA_VIOLATION, "color: Extra inputs are not permitted"),
        (encode(context={str(i): "v" for i in range(17)}), ErrorKind.SCHEMA_VIOLATION, "context"),
        (encode(dwell_ms=-1), ErrorKind.SCHEMA_VIOLATION, "dwell_ms: Input should be greater"),
    ],
)
def test_bad_events_are_rejected_with_a_clear_reason(raw, kind, says):
    error = reject(raw)
    assert error.kind is kind
    assert says in error.reason


def test_missing_fields_are_all_named():
    error = reject(json.dumps({"event_id": "e"}).encode())
    for field in ("user_id", "item_id", "event_type", "timestamp"):
        assert f"{field}: Field required" in error.reason


def test_oversize_payload_is_rejected_before_parsing():
    raw = encode(context={"note": "x" * 200}) + b" " * MAX_MESSAGE_BYTES
    error = reject(raw)
    assert error.kind is ErrorKind.OVERSIZE
    assert str(MAX_MESSAGE_BYTES) in error.reason


def test_catalog_messages_upsert_by_default_and_delete_explicitly():
    upsert = decode_catalog(b'{"item_id": "i1", "title": "Heat", "categories": ["Crime"]}')
    assert isinstance(upsert, ItemUpsert) and upsert.description == ""
    deletion = decode_catalog(b'{"op": "delete", "item_id": "i1"}')
    assert deletion == ItemDeletion(op="delete", item_id="i1")
    with pytest.raises(InvalidMessage, match="op must be 'upsert'"):
        decode_catalog(b'{"op": "remove", "item_id": "i1"}')
    with pytest.raises(InvalidMessage, match="description: String should have at most 8192"):
        decode_catalog(
            json.dumps({"item_id": "i", "title": "t", "description": "x" * 9000}).encode()
        )


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_decode_or_raise_invalid_message(raw: bytes):
    try:
        event = decode_event(raw)
    except InvalidMessage as error:
        assert error.reason
    else:
        assert isinstance(event, BehaviorEvent)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([*VALID, "dwell_ms", "context"]), json_values))
def test_near_valid_json_decodes_or_raises_invalid_message(fields: dict):
    raw = json.dumps({**VALID, **fields}).encode()
    try:
        decode_event(raw)
    except InvalidMessage as error:
        assert error.kind is ErrorKind.SCHEMA_VIOLATION


def test_the_events_topic_carries_events_and_erasures_and_nothing_else():
    assert decode_events_message(encode()) == decode_event(encode())
    erasure = decode_events_message(
        b'{"op": "forget", "user_id": "u-1", "requested_at": 1714557600000}'
    )
    assert erasure == UserErasure(
        op="forget", user_id="u-1", requested_at=datetime(2024, 5, 1, 10, tzinfo=UTC)
    )
    for raw, says in [
        (b'{"op": "erase", "user_id": "u-1"}', "op must be absent"),
        (b'{"op": "forget", "user_id": "u-1"}', "requested_at"),
        (encode(op="forget"), "invalid events-topic message"),
    ]:
        with pytest.raises(InvalidMessage, match=says) as caught:
            decode_events_message(raw)
        assert caught.value.kind is ErrorKind.SCHEMA_VIOLATION
    with pytest.raises(InvalidMessage, match="invalid BehaviorEvent"):
        decode_event(erasure.model_dump_json().encode())  # a training log takes events only
