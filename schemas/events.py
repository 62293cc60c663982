"""Messages that flow into Currents: user behaviour and the item catalog."""

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Discriminator, Field, StringConstraints, Tag

from schemas.common import MESSAGE_CONFIG, EventTimestamp, Identifier, ShortText

__all__ = [
    "BehaviorEvent",
    "CatalogMessage",
    "EventType",
    "EventsMessage",
    "ItemDeletion",
    "ItemUpsert",
    "UserErasure",
]


class EventType(StrEnum):
    """What the user did with the item. New kinds are added here, never renamed."""

    CLICK = "click"
    VIEW = "view"


ContextMap = Annotated[
    dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], ShortText],
    Field(max_length=16),
]


# Sent by product services (web, app backends) to the events topic, keyed by user_id.
class BehaviorEvent(BaseModel):
    """One user interaction with one item."""

    model_config = MESSAGE_CONFIG

    event_id: Identifier = Field(
        description="Unique id of this event, used to drop duplicates; producers must reuse it "
        "when they retry a send."
    )
    user_id: Identifier = Field(description="The user; also the Kafka message key.")
    item_id: Identifier = Field(description="The item interacted with, as in the catalog.")
    event_type: EventType = Field(description="Kind of interaction: click or view.")
    timestamp: EventTimestamp = Field(
        description="When the user acted (not when it was sent): ISO 8601 with an explicit "
        "offset, or an integer of Unix epoch milliseconds; between 1990-01-01 and 2100-01-01."
    )
    dwell_ms: int | None = Field(
        default=None,
        ge=0,
        le=24 * 3600 * 1000,
        description="Time spent on the item in milliseconds, when known (at most 24 h).",
    )
    context: ContextMap | None = Field(
        default=None,
        description="Free-form context such as surface or device: at most 16 entries, "
        "keys up to 64 and values up to 256 characters.",
    )


# Sent by `currents forget` (or a privacy service) to the events topic, keyed by user_id: in
# the user's partition, ordered with the user's events, and seen by replays too.
class UserErasure(BaseModel):
    """Forget a user: the worker deletes the user's state (its store and a changelog tombstone)
    and publishes a tombstone for the user to the updates topic. A later event starts afresh."""

    model_config = MESSAGE_CONFIG

    op: Literal["forget"] = Field(description="Message kind: must be 'forget'.")
    user_id: Identifier = Field(description="The user to forget; also the Kafka message key.")
    requested_at: EventTimestamp = Field(
        description="When the erasure was asked for: ISO 8601 with an offset, or epoch ms."
    )


def _op_or(default: str):
    """The discriminator of a topic's messages: their "op", or `default` where it is absent."""

    def op(value: object) -> object:
        if isinstance(value, dict):
            return value.get("op", default)
        return getattr(value, "op", default)

    return op


EventsMessage = Annotated[
    Annotated[BehaviorEvent, Tag("event")] | Annotated[UserErasure, Tag("forget")],
    Discriminator(
        _op_or("event"),  # behaviour events carry no op; an erasure says forget
        custom_error_type="invalid_op",
        custom_error_message="op must be absent (a behaviour event) or 'forget' (an erasure)",
    ),
]


# Sent by the catalog service to the catalog topic, keyed by item_id.
class ItemUpsert(BaseModel):
    """Create an item or replace its text; the item is encoded again when its text changes."""

    model_config = MESSAGE_CONFIG

    op: Literal["upsert"] = Field(default="upsert", description="Message kind; may be omitted.")
    item_id: Identifier = Field(description="The item; also the Kafka message key.")
    title: Annotated[str, StringConstraints(max_length=512)] = Field(
        description="Display title, up to 512 characters."
    )
    description: Annotated[str, StringConstraints(max_length=8192)] = Field(
        default="", description="Free text the item is embedded from, up to 8192 characters."
    )
    categories: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=64)]], Field(max_length=32)
    ] = Field(default_factory=list, description="Up to 32 category names, e.g. genres.")
    attributes: ContextMap | None = Field(
        default=None, description="Optional extra attributes, same limits as event context."
    )


# Sent by the catalog service to the catalog topic, keyed by item_id.
class ItemDeletion(BaseModel):
    """Remove an item: it stops being recommended on every worker."""

    model_config = MESSAGE_CONFIG

    op: Literal["delete"] = Field(description="Message kind: must be 'delete'.")
    item_id: Identifier = Field(description="The item to remove; also the Kafka message key.")


CatalogMessage = Annotated[
    Annotated[ItemUpsert, Tag("upsert")] | Annotated[ItemDeletion, Tag("delete")],
    Discriminator(
        _op_or("upsert"),  # upserts may omit op
        custom_error_type="invalid_op",
        custom_error_message="op must be 'upsert' (the default) or 'delete'",
    ),
]
