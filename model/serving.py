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

    states: U rows; user_row (E,) long row of each event's user, non-decreasing (the events
    grouped by user, each user's in order); item_vecs (E, d); event_type (E,) long; timestamp
    (E,) float64. Each user's events run as one sequence through the LSTM from that user's
    state (one call for the whole batch, however many events a user has: streams are bursty),
    then the attention of every event over its window of the last K memory slots, old ring
    included. The math is `step`'s, event after event; tests/model checks they agree. Returns
    the updated states (U rows; the input is not modified) and one output per event.
    """
    U, E, K = len(states), user_row.shape[0], model.cfg.window
    d, device = model.cfg.d_model, item_vecs.device
    if E == 0:
        empty = item_vecs.new_zeros(0, d)
        none = item_vecs.new_zeros(0, K)
        return states.select(torch.arange(U, device=device)), StepOutput(empty, empty, none)
    if E > 1 and bool((user_row[1:] < user_row[:-1]).any()):
        raise ValueError("step_events needs the events grouped by user: user_row non-decreasing")
    lengths = torch.bincount(user_row, minlength=U)  # (U,)
    rows = torch.nonzero(lengths).squeeze(1)  # (A,) users with events
    n = lengths[rows]  # (A,) their events, consecutive in the batch
    A, T = len(rows), int(n.max())
    a = torch.repeat_interleave(torch.arange(A, device=device), n)  # (E,) each event's user
    start = torch.cumsum(n, 0) - n  # (A,) each user's first event
    pos = torch.arange(E, device=device) - start[a]  # (E,) position in the user's sequence
    head = pos == 0  # the user's first event of the batch: its predecessor is in the state

    old = states if A == U else states.select(rows)
    first = head & (old.count[a] == 0)
    gap = torch.where(first, 0.0, timestamp - torch.where(head, old.last_ts[a], timestamp.roll(1)))
    x = model._inputs(item_vecs, event_type, gap, first)  # (E, d)
    hx = (old.h.unsqueeze(0), old.c.unsqueeze(0))
    grid = x.new_zeros(A * T, d)  # (A, T) right-padded sequences; padded positions never read
    grid[a * T + pos] = x
    grid = grid.view(A, T, d)
    if E == A * T:  # every user has T events: no padding
        hs, (h, c) = model.lstm(grid, hx)
    else:
        packed = pack_padded_sequence(grid, n.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = model.lstm(packed, hx)
        hs, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (A, T, d)
    memory = hs + grid  # (A, T, d) this batch's memory slots
    m_events = memory.reshape(A * T, d)[a * T + pos]  # (E, d)

    # window of event e = the K memory slots ending at it: old ring, then this batch's
    seq = torch.cat([old.ring, memory], dim=1)  # (A, K+T, d)
    kv = model.attn.kv(seq).view(A * (K + T), 2 * d)
    slots = torch.arange(K, device=device)
    window = (a * (K + T) + pos + 1).unsqueeze(1) + slots  # (E, K) rows of kv
    seen = (old.count[a] + pos + 1).clamp(max=K)  # (E,) states that exist in each window
    valid = slots >= K - seen.unsqueeze(1)  # (E, K)
    interest, attention = model._interest(m_events, kv[window], valid)

    last = start + n - 1  # (A,) each user's last event
    ends = torch.arange(A, device=device) * (K + T) + n  # (A,) where each user's new ring starts
    ring = seq.reshape(A * (K + T), d)[ends.unsqueeze(1) + slots]  # (A, K, d)
    stepped = UserState(h[0], c[0], ring, timestamp[last], old.count + n, interest[last])
    if A == U:
        new = stepped
    else:
        new = states.select(torch.arange(U, device=device))  # copy: callers keep the old states
        new.assign(rows, stepped)
    # interest before each event: the user's previous event's, or the stored one for the first
    before = torch.where(head.unsqueeze(1), old.interest[a], interest.roll(1, 0))
    return new, StepOutput(interest=interest, prev_interest=before, attention=attention)
