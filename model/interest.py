"""User interest model: item representations, an LSTM over events, attention over recent states.

Two entry points share every layer: `forward_sequence` (training, padded batches, teacher
forcing) and `step` (streaming, one event per user row). `step` calls the same `nn.LSTM` with a
length-1 sequence, so the two paths run identical math; tests/model checks they agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import N_GAP_FEATURES, ModelConfig
from model.state import UserState

__all__ = [
    "InterestModel",
    "StepOutput",
    "category_distribution",
    "category_mass",
    "category_shift",
    "top_n",
]


@dataclass
class StepOutput:
    interest: torch.Tensor  # (B, d) interest vector after this event
    prev_interest: torch.Tensor  # (B, d) interest vector before it (zeros for a first event)


def gap_features(gap: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """(..., ) float64 seconds since the previous event, bool first-event flag -> (..., 2)."""
    gap = torch.log1p(gap.clamp(min=0.0)).to(torch.float32)  # clock skew must not go negative
    return torch.stack([gap, first.to(torch.float32)], dim=-1)


class WindowAttention(nn.Module):
    """Attention of the current hidden state over the user's last K hidden states.

    Keys get a learned per-lag vector, so recency can matter; invalid slots (a user with fewer
    than K events) are masked out.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.lag = nn.Parameter(torch.zeros(cfg.window, d))  # slot K-1 = current event
        self.scale = 1.0 / math.sqrt(d)

    def forward(self, h: torch.Tensor, kv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # h (..., d) query; kv (..., K, 2d) = self.kv(last K hidden states, oldest first);
        # valid (..., K) bool
        k, v = kv.chunk(2, dim=-1)  # (..., K, d) each
        k = k + self.lag
        att = (k @ self.q(h).unsqueeze(-1)).squeeze(-1) * self.scale  # (..., K)
        att = att.masked_fill(~valid, float("-inf")).softmax(dim=-1)
        return (att.unsqueeze(-2) @ v).squeeze(-2)  # (..., d)


class InterestModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(), nn.Linear(d, d))
        self.id_emb = nn.Embedding(cfg.n_items, d, padding_idx=0)
        self.type_emb = nn.Embedding(cfg.n_event_types, cfg.type_dim, padding_idx=0)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(d + cfg.type_dim + N_GAP_FEATURES, d, batch_first=True)
        self.attn = WindowAttention(cfg)
        self.out = nn.Linear(2 * d, d)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()

    def item_representations(self, text_vecs: torch.Tensor, warm_idx: torch.Tensor) -> torch.Tensor:
        """(N, text_dim) float32, (N,) long warm index (0 = cold) -> (N, d).

        Cold items (index 0) get a zero id vector, so they are represented by their text alone.
        In training, id vectors are dropped at random so the text path learns to stand alone.
        """
        ids = self.id_emb(warm_idx)  # (N, d)
        if self.training and self.cfg.id_dropout > 0:
            keep = torch.rand(ids.shape[0], 1, device=ids.device) >= self.cfg.id_dropout
            ids = ids * keep
        return self.text_proj(text_vecs) + ids

    def _inputs(self, item_vecs, event_type, gap, first) -> torch.Tensor:
        # item_vecs (..., d), event_type (...), gap (...) float64, first (...) bool -> (..., in)
        x = torch.cat([item_vecs, self.type_emb(event_type), gap_features(gap, first)], dim=-1)
        return self.drop(x)

    def _interest(self, h: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(torch.cat([h, ctx], dim=-1)))  # (..., d)

    def forward_sequence(
        self, item_vecs: torch.Tensor, event_type: torch.Tensor, timestamp: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run right-padded sequences from a fresh state.

        item_vecs (B, T, d), event_type (B, T) long, timestamp (B, T) float64 seconds.
        Returns hidden states (B, T, d) and interest vectors (B, T, d); position t has seen
        events 0..t. Outputs at padded positions are meaningless and must be masked by the caller.
        """
        B, T, _ = item_vecs.shape
        K = self.cfg.window
        gap = F.pad(timestamp[:, 1:] - timestamp[:, :-1], (1, 0))  # (B, T), 0 for first event
        first = torch.zeros(B, T, dtype=torch.bool, device=gap.device)
        first[:, 0] = True
        hs, _ = self.lstm(self._inputs(item_vecs, event_type, gap, first))  # (B, T, d)
        # project before windowing: the Linear is row-wise, so this equals projecting each window
        kv = F.pad(self.attn.kv(hs), (0, 0, K - 1, 0))  # (B, K-1+T, 2d)
        kv = kv.unfold(1, K, 1).transpose(-1, -2)  # (B, T, K, 2d): slot K-1 is position t
        t = torch.arange(T, device=hs.device).unsqueeze(1)  # (T, 1)
        valid = torch.arange(K, device=hs.device) >= K - 1 - t  # (T, K): slot holds event >= 0
        ctx = self.attn(hs, kv, valid.expand(B, T, K))  # (B, T, d)
        return hs, self._interest(hs, ctx)

    def step(
        self,
        states: UserState,
        item_vecs: torch.Tensor,
        event_type: torch.Tensor,
        timestamp: torch.Tensor,
    ) -> tuple[UserState, StepOutput]:
        """Apply one event per user row: item_vecs (B, d), event_type (B,) long in
        1..len(EVENT_TYPES), timestamp (B,) float64 seconds. Returns the new states and outputs.
        """
        if timestamp.dtype != torch.float64:
            raise TypeError("timestamp must be float64 seconds (float32 loses ~100 s at 1e9 s)")
        if (
            event_type.numel()
            and not ((event_type >= 1) & (event_type < self.cfg.n_event_types)).all()
        ):
            raise ValueError(f"event_type indices must be in 1..{self.cfg.n_event_types - 1}")
        K = self.cfg.window
        first = states.count == 0
        gap = torch.where(first, 0.0, timestamp - states.last_ts)  # (B,) float64
        x = self._inputs(item_vecs, event_type, gap, first)  # (B, in)
        _, (h, c) = self.lstm(x.unsqueeze(1), (states.h.unsqueeze(0), states.c.unsqueeze(0)))
        h, c = h.squeeze(0), c.squeeze(0)  # (B, d) each
        ring = torch.cat([states.ring[:, 1:], h.unsqueeze(1)], dim=1)  # (B, K, d) oldest first
        count = states.count + 1
        valid = torch.arange(K, device=h.device) >= K - count.clamp(max=K).unsqueeze(1)  # (B, K)
        interest = self._interest(h, self.attn(h, self.attn.kv(ring), valid))  # (B, d)
        new = UserState(h, c, ring, timestamp.clone(), count, interest)
        return new, StepOutput(interest=interest, prev_interest=states.interest)

    def fresh_state(self, batch: int) -> UserState:
        return UserState.fresh(batch, self.cfg.d_model, self.cfg.window)


def top_n(
    interest: torch.Tensor, reps: torch.Tensor, n: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank all items: interest (B, d), reps (N, d), optional exclude (B, N) bool.
    Returns (scores, indices), each (B, min(n, N)), best first."""
    scores = interest @ reps.T
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    return scores.topk(min(n, scores.shape[1]), dim=-1)


def category_distribution(
    interest: torch.Tensor, reps: torch.Tensor, membership: torch.Tensor
) -> torch.Tensor:
    """Interest over categories: softmax over all item scores, summed per category.

    interest (B, d), reps (N, d), membership (N, C) float (1 where the item is in the category,
    a row may have several) -> (B, C), rows summing to 1. Built from items rather than a trained
    category head so that categories added by catalog upserts after training work at once.
    """
    return category_mass(interest @ reps.T, membership)


def category_mass(scores: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """category_distribution from item scores (B, N) already computed."""
    mass = scores.softmax(dim=-1) @ membership  # (B, C)
    return mass / mass.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def category_shift(
    out: StepOutput, reps: torch.Tensor, membership: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(distribution after the event, distribution after − before), each (B, C).
    Before a user's first event the previous interest is zero: all items equally likely."""
    both = torch.cat([out.interest, out.prev_interest])  # (2B, d)
    new, old = category_distribution(both, reps, membership).chunk(2)
    return new, new - old
