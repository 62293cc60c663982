"""Model configuration: one small frozen dataclass, stored inside every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EVENT_TYPES", "N_GAP_FEATURES", "ModelConfig", "event_type_index"]

# Index 0 is padding; it is never a real event. Unknown types are rejected (see event_type_index)
# rather than mapped to an "other" slot, because an untrained "other" embedding would feed noise
# into every later step of that user's state.
EVENT_TYPES: tuple[str, ...] = ("click", "view")
N_GAP_FEATURES = 2  # log1p(seconds since the previous event), is-first-event flag


def event_type_index(name: str) -> int:
    """Map an event type name to its embedding index (1-based); raise on unknown types."""
    try:
        return EVENT_TYPES.index(name) + 1
    except ValueError:
        raise ValueError(
            f"unknown event type {name!r}; known types: {', '.join(EVENT_TYPES)}"
        ) from None


@dataclass(frozen=True)
class ModelConfig:
    n_items: int = 1  # rows of the id embedding: warm items + 1 (row 0 = cold / padding)
    text_dim: int = 384  # width of the text encoder's sentence vectors
    d_model: int = 64  # width of item representations, LSTM state and interest vector
    window: int = 16  # K: attention looks at the user's last K memory slots
    n_head: int = 2  # attention heads over the window
    type_dim: int = 8  # width of the event-type embedding
    dropout: float = 0.4
    id_dropout: float = 0.4  # chance an item's id embedding is dropped per training batch

    @property
    def n_event_types(self) -> int:
        return len(EVENT_TYPES) + 1

    def __post_init__(self) -> None:
        if self.n_items < 1 or self.d_model < 1 or self.window < 1 or self.text_dim < 1:
            raise ValueError(f"invalid ModelConfig sizes: {self}")
        if self.n_head < 1 or self.d_model % self.n_head:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
