"""Per-user recurrent state: a batch of tensors in memory, compact bytes at rest.

Wire format of one user's state (little endian), format version 1:

    header  magic b"CUST" | u16 format | 16s model version (ASCII, NUL padded)
            | u16 d_model | u16 window | u16 ring rows stored | u64 event count | f64 last timestamp
    body    float32 h[d] | c[d] | interest[d] | ring[rows, d] (oldest first)

Only the ring rows actually filled are stored, so a new user's state is small.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "FORMAT_VERSION",
    "StateError",
    "StateFormatError",
    "StateVersionError",
    "UserState",
    "decode_states",
    "encode_states",
]

MAGIC = b"CUST"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sH16sHHHQd")


class StateError(ValueError):
    """A stored user state cannot be used with this model."""


class StateFormatError(StateError):
    """The bytes are not a state of this format version or shape (corrupt, truncated, foreign)."""


class StateVersionError(StateError):
    """The state was written by a different model version; it must be rebuilt, not reused."""


@dataclass
class UserState:
    """Recurrent state of B users, one row each."""

    h: torch.Tensor  # (B, d) LSTM hidden state
    c: torch.Tensor  # (B, d) LSTM cell state
    ring: torch.Tensor  # (B, K, d) last K memory slots (hidden state + input), oldest first
    last_ts: torch.Tensor  # (B,) float64 seconds of the last event
    count: torch.Tensor  # (B,) int64 events applied so far
    interest: torch.Tensor  # (B, d) interest vector after the last event (zeros before any)

    @classmethod
    def fresh(cls, batch: int, d_model: int, window: int) -> UserState:
        z = torch.zeros(batch, d_model)
        return cls(
            h=z,
            c=z.clone(),
            ring=torch.zeros(batch, window, d_model),
            last_ts=torch.zeros(batch, dtype=torch.float64),
            count=torch.zeros(batch, dtype=torch.int64),
            interest=z.clone(),
        )

    def __len__(self) -> int:
        return self.h.shape[0]

    def select(self, rows: torch.Tensor) -> UserState:
        """The states of the given rows, as a new batch."""
        return UserState(*(getattr(self, f)[rows] for f in _FIELDS))

    def assign(self, rows: torch.Tensor, other: UserState) -> None:
        """Overwrite the given rows with `other`'s rows, in place."""
        for f in _FIELDS:
            getattr(self, f)[rows] = getattr(other, f)


_FIELDS = ("h", "c", "ring", "last_ts", "count", "interest")
_FIELDS_F32 = ("h", "c", "interest", "ring")


def encode_states(state: UserState, version: str) -> list[bytes]:
    """Serialise each row of a state batch to bytes tagged with the model version."""
    tag = _version_tag(version)
    d, k = state.h.shape[1], state.ring.shape[1]
    h, c, interest, ring = (getattr(state, f).detach().cpu().numpy() for f in _FIELDS_F32)
    out = []
    for i, (n, ts) in enumerate(zip(state.count.tolist(), state.last_ts.tolist(), strict=True)):
        rows = min(n, k)
        head = _HEADER.pack(MAGIC, FORMAT_VERSION, tag, d, k, rows, n, ts)
        body = np.concatenate([h[i], c[i], interest[i], ring[i, k - rows :].reshape(-1)])
        out.append(head + body.astype("<f4", copy=False).tobytes())
    return out


def decode_states(
    blobs: Sequence[bytes | None], version: str, d_model: int, window: int
) -> UserState:
    """Decode a batch of stored states; None gives a fresh state for a new user."""
    n_rows = len(blobs)
    vectors = np.zeros((n_rows, 3, d_model), dtype=np.float32)  # h, c, interest
    ring = np.zeros((n_rows, window, d_model), dtype=np.float32)
    last_ts = np.zeros(n_rows, dtype=np.float64)
    count = np.zeros(n_rows, dtype=np.int64)
    tag = _version_tag(version)
    for i, blob in enumerate(blobs):
        if blob is None:
            continue
        if len(blob) < _HEADER.size:
            raise StateFormatError(f"state is {len(blob)} bytes, shorter than its header")
        magic, fmt, vtag, d, k, rows, n, ts = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise StateFormatError(f"not a user state (magic {magic!r}, expected {MAGIC!r})")
        if fmt != FORMAT_VERSION:
            raise StateVersionError(
                f"state format version {fmt} is not supported (this build reads {FORMAT_VERSION})"
            )
        if vtag != tag:
            found = vtag.rstrip(b"\0").decode("ascii", "replace")
            raise StateVersionError(
                f"state belongs to model version {found!r}, not {version!r}; rebuild it"
            )
        if (d, k) != (d_model, window) or rows != min(n, k):
            raise StateFormatError(f"state shape d={d} K={k} rows={rows} does not fit this model")
        body = np.frombuffer(blob, dtype="<f4", offset=_HEADER.size)
        if body.size != (3 + rows) * d:
            raise StateFormatError(f"state body has {body.size} floats, expected {(3 + rows) * d}")
        vectors[i] = body[: 3 * d].reshape(3, d)
        if rows:
            ring[i, k - rows :] = body[3 * d :].reshape(rows, d)
        last_ts[i], count[i] = ts, n
    h, c, interest = torch.from_numpy(vectors).unbind(1)
    return UserState(
        h=h.contiguous(),
        c=c.contiguous(),
        ring=torch.from_numpy(ring),
        last_ts=torch.from_numpy(last_ts),
        count=torch.from_numpy(count),
        interest=interest.contiguous(),
    )


def _version_tag(version: str) -> bytes:
    raw = version.encode("ascii")
    if not raw or len(raw) > 16:
        raise ValueError(f"model version must be 1..16 ASCII characters, got {version!r}")
    return raw.ljust(16, b"\0")
