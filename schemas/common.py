"""Limits and field types shared by every Currents message.

The limits are part of the contract with producers: they are written on the fields, so they
appear in the exported JSON Schema, and a message outside them is rejected, never truncated.
"""

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    WithJsonSchema,
)

__all__ = [
    "MAX_ID_LENGTH",
    "MAX_MESSAGE_BYTES",
    "MESSAGE_CONFIG",
    "EARLIEST_EPOCH_MS",
    "EARLIEST_TIMESTAMP",
    "LATEST_EPOCH_MS",
    "LATEST_TIMESTAMP",
    "EventTimestamp",
    "Identifier",
    "ShortText",
    "UtcTimestamp",
]

MAX_ID_LENGTH = 128
MAX_MESSAGE_BYTES = 64 * 1024  # larger payloads are dead-lettered before parsing
EARLIEST_TIMESTAMP = datetime(1990, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP = datetime(2100, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
EARLIEST_EPOCH_MS = (EARLIEST_TIMESTAMP - _EPOCH) // _MILLISECOND
LATEST_EPOCH_MS = (LATEST_TIMESTAMP - _EPOCH) // _MILLISECOND

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


# pydantic reads a string of digits as Unix seconds or milliseconds, even in strict mode.
_NUMERIC_STRING = re.compile(r"[+-]?[0-9.]+")


def _from_epoch_ms(value: object) -> object:
    """Turn epoch milliseconds into a datetime; reject what is neither that nor a string, with a
    reason: a float, a boolean or a numeric string is more likely a unit mistake than a time."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        if _NUMERIC_STRING.fullmatch(value):
            raise ValueError(
                "a numeric string is not a timestamp: send epoch milliseconds as a JSON integer"
            )
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not EARLIEST_EPOCH_MS <= value < LATEST_EPOCH_MS:
            raise ValueError(
                f"epoch milliseconds {value} are outside "
                f"[{EARLIEST_TIMESTAMP.date()}, {LATEST_TIMESTAMP.date()})"
            )
        return _EPOCH + value * _MILLISECOND
    raise ValueError(
        "expected an ISO 8601 string with an offset or an integer of epoch milliseconds, "
        f"got {type(value).__name__}"
    )


# A timestamp producers send: ISO 8601 with an offset, as UtcTimestamp, or an integer of epoch
# milliseconds (what most producers in other languages have at hand). Either way it becomes a UTC
# datetime, range-checked the same, and serialised as ISO 8601.
EventTimestamp = Annotated[
    AwareDatetime,
    Strict(False),  # lets an ISO string through in Python mode; only str or datetime get here
    BeforeValidator(_from_epoch_ms),
    AfterValidator(_utc_in_range),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "format": "date-time",
                    "description": "ISO 8601 time with an explicit offset, "
                    "e.g. 2024-05-01T12:00:00Z.",
                },
                {
                    "type": "integer",
                    "minimum": EARLIEST_EPOCH_MS,
                    "maximum": LATEST_EPOCH_MS - 1,
                    "description": "Unix epoch milliseconds, e.g. 1714564800000.",
                },
            ],
        },
        mode="validation",
    ),
]
