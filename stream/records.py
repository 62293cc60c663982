"""Plain functions the agents call per record; tests call them without Kafka."""

from datetime import UTC, datetime

from schemas import BehaviorEvent, DeadLetter, ErrorKind, InvalidMessage, decode_event

__all__ = ["dead_letter", "decode_keyed_event", "record_activity"]


def decode_keyed_event(key: bytes | None, value: bytes) -> BehaviorEvent:
    """Decode an events-topic record and check it is keyed by its user.

    A record keyed by anything else sits in another user's partition, so its user's state
    would be split across workers: it is rejected rather than applied out of order.
    """
    event = decode_event(value)
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
            payload=bytes(value),
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


def record_activity(
    previous: dict | None, event: BehaviorEvent, partition: int, offset: int
) -> dict:
    """Fold one event into a user's activity summary (count, last event, source offset)."""
    count = (previous or {}).get("events", 0) + 1
    return {
        "events": count,
        "last_event_id": event.event_id,
        "last_item_id": event.item_id,
        "last_timestamp": event.timestamp.isoformat(),
        "partition": partition,
        "offset": offset,
    }
