"""Wire contracts of Currents: one strict pydantic model per Kafka message."""

from schemas.common import MAX_MESSAGE_BYTES
from schemas.decode import InvalidMessage, decode_catalog, decode_event, decode_events_message
from schemas.events import (
    BehaviorEvent,
    CatalogMessage,
    EventsMessage,
    EventType,
    ItemDeletion,
    ItemUpsert,
    UserErasure,
)
from schemas.outputs import (
    DeadLetter,
    ErrorKind,
    EventRef,
    InterestUpdate,
    Reason,
    Recommendation,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "BehaviorEvent",
    "CatalogMessage",
    "DeadLetter",
    "ErrorKind",
    "EventRef",
    "EventType",
    "EventsMessage",
    "InterestUpdate",
    "InvalidMessage",
    "ItemDeletion",
    "ItemUpsert",
    "Reason",
    "Recommendation",
    "UserErasure",
    "decode_catalog",
    "decode_event",
    "decode_events_message",
]
