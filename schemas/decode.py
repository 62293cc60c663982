"""Bytes in, validated message out, or one exception that says what was wrong.

Workers call these on every record, so every failure mode (size, encoding, JSON syntax, schema)
ends in `InvalidMessage`, which carries the `ErrorKind` and a reason fit for a dead letter.
"""

from pydantic import TypeAdapter, ValidationError

from schemas.common import MAX_MESSAGE_BYTES
from schemas.events import (
    BehaviorEvent,
    CatalogMessage,
    EventsMessage,
    ItemDeletion,
    ItemUpsert,
    UserErasure,
)
from schemas.outputs import ErrorKind

__all__ = ["InvalidMessage", "decode_catalog", "decode_event", "decode_events_message"]

_MAX_REPORTED_ERRORS = 5
_catalog_adapter: TypeAdapter[ItemUpsert | ItemDeletion] = TypeAdapter(CatalogMessage)
_events_adapter: TypeAdapter[BehaviorEvent | UserErasure] = TypeAdapter(EventsMessage)


class InvalidMessage(ValueError):
    """A record that is not a valid message; `kind` classifies it, `reason` explains it."""

    def __init__(self, kind: ErrorKind, reason: str):
        super().__init__(f"{kind.value}: {reason}")
        self.kind = kind
        self.reason = reason


def decode_event(raw: bytes) -> BehaviorEvent:
    """Decode one events-topic record value."""
    return _decode(raw, BehaviorEvent.model_validate_json, "BehaviorEvent")


def decode_events_message(raw: bytes) -> BehaviorEvent | UserErasure:
    """Decode one events-topic record value: a behaviour event, or an erasure of its user."""
    return _decode(raw, _events_adapter.validate_json, "events-topic message")


def decode_catalog(raw: bytes) -> ItemUpsert | ItemDeletion:
    """Decode one catalog-topic record value: an upsert (default) or a deletion."""
    return _decode(raw, _catalog_adapter.validate_json, "catalog message")


def _decode(raw: bytes, validate, what: str):
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise InvalidMessage(ErrorKind.UNDECODABLE, f"expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(
            ErrorKind.OVERSIZE, f"{len(raw)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"
        )
    try:
        return validate(bytes(raw))
    except ValidationError as exc:
        raise _as_invalid(exc, what) from None


def _as_invalid(exc: ValidationError, what: str) -> InvalidMessage:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return InvalidMessage(ErrorKind.UNDECODABLE, f"not UTF-8 JSON: {errors[0]['msg']}")
    parts = []
    for error in errors[:_MAX_REPORTED_ERRORS]:
        where = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{where}: {error['msg']}")
    if len(errors) > _MAX_REPORTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_REPORTED_ERRORS} more errors")
    return InvalidMessage(ErrorKind.SCHEMA_VIOLATION, f"invalid {what}: " + "; ".join(parts))
