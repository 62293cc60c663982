"""Limits and field types shared by every Currents message.

The limits are part of the contract with producers: they are written on the fields, so they
appear in the exported JSON Schema, and a message outside them is rejected, never truncated.
"""

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, ConfigDict, Field, StringConstraints

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_MESSAGE_BYTES",
    "MESSAGE_CONFIG",
    "EARLIEST_TIMESTAMP",
    "LATEST_TIMESTAMP",
    "Identifier",
    "ShortText",
    "UtcTimestamp",
]

MAX_ID_LENGTH = 128
MAX_MESSAGE_BYTES = 64 * 1024  # larger payloads are dead-lettered before parsing
EARLIEST_TIMESTAMP = datetime(1990, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP = datetime(2100, 1, 1, tzinfo=UTC)

# strict: no silent coercion ("5" is not 5); extra="forbid": a typo in a field name is an error,
# not a dropped value; frozen: a decoded message is a value, safe to share between tasks.
MESSAGE_CONFIG = ConfigDict(
    strict=True,
    extra="forbid",
    frozen=True,
    ser_json_bytes="base64",
    val_json_bytes="base64",
)

Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Field(description="Opaque identifier: 1-128 characters, no control characters."),
]

ShortText = Annotated[str, StringConstraints(max_length=256)]


def _utc_in_range(value: datetime) -> datetime:
    value = value.astimezone(UTC)
    if not EARLIEST_TIMESTAMP <= value < LATEST_TIMESTAMP:
        raise ValueError(
            f"timestamp {value.isoformat()} is outside "
            f"[{EARLIEST_TIMESTAMP.date()}, {LATEST_TIMESTAMP.date()})"
        )
    return value


UtcTimestamp = Annotated[
    AwareDatetime,
    AfterValidator(_utc_in_range),
    Field(
        description="ISO 8601 time with an explicit offset (e.g. 2024-05-01T12:00:00Z), "
        "normalised to UTC; between 1990-01-01 and 2100-01-01."
    ),
]
