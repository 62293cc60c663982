"""Messages that Currents publishes: interest updates for product services, dead letters for
operators."""

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, NonNegativeInt, PositiveInt

from schemas.common import MESSAGE_CONFIG, Identifier, UtcTimestamp
from schemas.events import EventType

__all__ = ["DeadLetter", "ErrorKind", "EventRef", "InterestUpdate", "Reason", "Recommendation"]

# 2: recommendations carry `because` (optional: version 1 messages still validate)
SCHEMA_VERSION = 2
MAX_REASONS = 3

CategoryWeights = Annotated[dict[str, float], Field(max_length=256)]


class EventRef(BaseModel):
    """Where an event that an update covers came from."""

    model_config = MESSAGE_CONFIG

    event_id: Identifier = Field(description="The event's own id.")
    event_type: EventType = Field(description="The event's kind: click or view.")
    timestamp: UtcTimestamp = Field(description="The event's timestamp.")
    partition: NonNegativeInt = Field(description="Partition of the events topic it was read from.")
    offset: NonNegativeInt = Field(description="Offset in that partition.")
    rank: PositiveInt | None = Field(
        default=None,
        description="Replays only (prequential check): where this event's item stood in the "
        "user's ranking just before the event, 1 = top. Absent on a user's first event.",
    )


class Reason(BaseModel):
    """One of the user's recent events that supports a recommendation."""

    model_config = MESSAGE_CONFIG

    event_id: Identifier = Field(description="The event's id: one the worker applied for the user.")
    item_id: Identifier = Field(description="The item of that event.")
    event_type: EventType | None = Field(
        default=None,
        description="The event's kind; absent for events applied before kinds were recorded.",
    )


class Recommendation(BaseModel):
    """One recommended item."""

    model_config = MESSAGE_CONFIG

    item_id: Identifier = Field(description="The recommended item.")
    score: float = Field(description="Model score; higher is better, comparable within an update.")
    because: Annotated[list[Reason], Field(max_length=MAX_REASONS)] | None = Field(
        default=None,
        description=f"Up to {MAX_REASONS} of the user's recent events that most support this "
        "item, strongest first: the weight the model gave each of the user's last events "
        "(its attention over them, the newest also directly), times how the event's item "
        "scores against this one. Absent in schema version 1.",
    )


# Published by Currents workers to the interest-updates topic, keyed by user_id.
class InterestUpdate(BaseModel):
    """A user's refreshed interests after one or more new events."""

    model_config = MESSAGE_CONFIG

    schema_version: int = Field(
        default=SCHEMA_VERSION, description="Version of this message shape."
    )
    update_id: Annotated[str, Field(max_length=512)] = Field(
        description="Idempotency key: the same update re-published after a crash has the same id, "
        "so consumers can drop repeats."
    )
    user_id: Identifier = Field(description="The user; also the Kafka message key.")
    model_version: Annotated[str, Field(max_length=128)] = Field(
        description="Version id of the model checkpoint that produced this update."
    )
    events: Annotated[list[EventRef], Field(min_length=1, max_length=10_000)] = Field(
        description="The events this update covers, in the order they were applied."
    )
    interests: CategoryWeights = Field(
        description="The user's top interests: category name to weight in [0, 1]."
    )
    interest_shift: CategoryWeights = Field(
        description="Change of each category's weight since the user's previous update."
    )
    recommendations: Annotated[list[Recommendation], Field(max_length=1000)] = Field(
        description="Top-N recommended items, best first."
    )
    latency_ms: float = Field(
        ge=0,
        description="Milliseconds from the newest covered event's append to Kafka to publishing.",
    )


class ErrorKind(StrEnum):
    """Why a record was dead-lettered."""

    UNDECODABLE = "undecodable"  # not UTF-8 JSON
    SCHEMA_VIOLATION = "schema_violation"  # JSON, but not a valid message
    OVERSIZE = "oversize"  # larger than MAX_MESSAGE_BYTES
    UNKNOWN_ITEM = "unknown_item"  # an event for an item the catalog does not have
    MISSING_KEY = "missing_key"  # a record without the key the topic requires
    KEY_MISMATCH = "key_mismatch"  # the record key disagrees with the message's id


# Published by Currents workers to the dead-letter topic, keyed like the source record.
class DeadLetter(BaseModel):
    """A record Currents could not process, kept with the reason so it can be fixed and replayed."""

    model_config = MESSAGE_CONFIG

    payload: bytes = Field(
        description="The original record value, unchanged (URL-safe base64 in JSON)."
    )
    key: bytes | None = Field(
        default=None, description="The original record key (URL-safe base64 in JSON)."
    )
    source_topic: str = Field(description="Topic the record was read from.")
    partition: NonNegativeInt = Field(description="Its partition.")
    offset: NonNegativeInt = Field(description="Its offset.")
    error_kind: ErrorKind = Field(description="Class of the failure, for alerting and routing.")
    reason: Annotated[str, Field(max_length=4096)] = Field(
        description="Human-readable explanation, naming the offending field when there is one."
    )
    failed_at: UtcTimestamp = Field(description="When the worker rejected the record.")
