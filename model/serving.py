"""Helpers for the streaming engine: apply a micro-batch of events to a batch of user states."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model.interest import InterestModel, StepOutput
from model.state import UserState

__all__ = ["step_events"]


@torch.no_grad()
def step_events(
    model: InterestModel,
    states: UserState,
    user_row: torch.Tensor,
    item_vecs: torch.Tensor,
    event_type: torch.Tensor,
    timestamp: torch.Tensor,
) -> tuple[UserState, StepOutput]:
    """Apply E events, in order, to U users' states; a user may have several events.

    states: U rows; user_row (E,) long row of each event's user; item_vecs (E, d);
    event_type (E,) long; timestamp (E,) float64. Each user's events run as one sequence
    through the LSTM from that user's state (one call for the whole batch, however many events
    a user has: streams are bursty), then the attention of every position over its window of
    the last K hidden states, old ring included. The math is `step`'s, event after event;
    tests/model checks they agree. Returns the updated states (U rows; the input is not
    modified) and one output per event.
    """
    U, E, K = len(states), user_row.shape[0], model.cfg.window
    d, device = model.cfg.d_model, item_vecs.device
    if E == 0:
        empty = item_vecs.new_zeros(0, d)
        return states.select(torch.arange(U, device=device)), StepOutput(empty, empty)
    # position of each event within its user's sequence: 0 for the first, 1 for the second, ...
    same = user_row.unsqueeze(0) == user_row.unsqueeze(1)  # (E, E)
    pos = torch.tril(same, diagonal=-1).sum(1)  # (E,)
    lengths = torch.bincount(user_row, minlength=U)  # (U,)
    rows = torch.nonzero(lengths).squeeze(1)  # (A,) users with events
    T = int(lengths.max())

    # right-padded per-user sequences (A, T, ...); padded positions are never read
    slot = torch.full((U,), -1, dtype=torch.long, device=device)
    slot[rows] = torch.arange(len(rows), device=device)
    a = slot[user_row]  # (E,) row of each event among the active users
    vecs = item_vecs.new_zeros(len(rows), T, item_vecs.shape[1])
    vecs[a, pos] = item_vecs
    types = torch.ones(len(rows), T, dtype=torch.long, device=device)
    types[a, pos] = event_type
    ts = torch.zeros(len(rows), T, dtype=torch.float64, device=device)
    ts[a, pos] = timestamp

    old = states.select(rows)
    first = torch.zeros(len(rows), T, dtype=torch.bool, device=device)
    first[:, 0] = old.count == 0
    gap = ts - torch.cat([old.last_ts.unsqueeze(1), ts[:, :-1]], dim=1)  # (A, T) float64
    gap = torch.where(first, 0.0, gap)
    x = model._inputs(vecs, types, gap, first)  # (A, T, in)
    n = lengths[rows]
    packed = pack_padded_sequence(x, n.cpu(), batch_first=True, enforce_sorted=False)
    out, (h, c) = model.lstm(packed, (old.h.unsqueeze(0), old.c.unsqueeze(0)))
    hs, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (A, T, d)

    # Everything after the LSTM runs on the E events only, not on the (A, T) padded grid: with
    # bursty users, one long run in a batch makes the grid several times larger than E.
    index = torch.full((len(rows), T), -1, dtype=torch.long, device=device)  # (A, T) -> event
    index[a, pos] = torch.arange(E, device=device)
    h_events = hs[a, pos]  # (E, d)
    # window of event e = the K hidden states ending at it: old ring, then this batch's
    seq = torch.cat([old.ring, hs], dim=1)  # (A, K+T, d)
    kv = seq.new_zeros(len(rows), K + T, 2 * d)
    kv[:, :K] = model.attn.kv(old.ring)
    kv[a, K + pos] = model.attn.kv(h_events)
    window = (pos + 1).unsqueeze(1) + torch.arange(K, device=device)  # (E, K) positions in seq
    seen = (old.count[a] + pos + 1).clamp(max=K)  # (E,) states that exist in each window
    valid = torch.arange(K, device=device) >= K - seen.unsqueeze(-1)  # (E, K)
    interest = model._interest(h_events, model.attn(h_events, kv[a.unsqueeze(1), window], valid))

    last = n - 1  # (A,)
    at = torch.arange(len(rows), device=device)
    new = states.select(torch.arange(U, device=device))  # copy: callers keep the old states
    ring = seq[at.unsqueeze(1), n.unsqueeze(1) + torch.arange(K, device=device)]  # (A, K, d)
    new.assign(
        rows,
        UserState(h[0], c[0], ring, ts[at, last], old.count + n, interest[index[at, last]]),
    )
    # interest before each event: the user's previous event's, or the stored one for the first
    previous = index[a, (pos - 1).clamp(min=0)]
    before = torch.where((pos == 0).unsqueeze(1), old.interest[a], interest[previous])
    return new, StepOutput(interest=interest, prev_interest=before)
