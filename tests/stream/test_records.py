import json

import pytest

from schemas import DeadLetter, ErrorKind, InvalidMessage
from stream.demo import sample_events
from stream.records import dead_letter, decode_keyed_event, record_activity

EVENT = sample_events(users=1, events=1)[0]
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


def test_activity_counts_events_and_remembers_the_last():
    first, second = sample_events(users=1, events=2)
    summary = record_activity(record_activity(None, first, 0, 10), second, 0, 11)
    assert summary["events"] == 2
    assert (summary["last_event_id"], summary["offset"]) == (second.event_id, 11)
    assert json.loads(json.dumps(summary)) == summary  # stored by the json codec
