"""Helpers for the streaming engine: apply a micro-batch of events to a batch of user states."""

from __future__ import annotations

import torch

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
    event_type (E,) long; timestamp (E,) float64. Events run in rounds (the r-th event of every
    user in round r), so the Python loop is over the largest per-user count, not over events.
    Returns the updated states (U rows; input rows are not modified) and one output per event.
    """
    states = states.select(torch.arange(len(states)))  # copy: callers keep the old states
    E = user_row.shape[0]
    # occurrence number of each event within its user: 0 for the first, 1 for the second, ...
    same = user_row.unsqueeze(0) == user_row.unsqueeze(1)  # (E, E)
    occurrence = torch.tril(same, diagonal=-1).sum(1)  # (E,)
    interest = item_vecs.new_empty(E, model.cfg.d_model)
    prev = item_vecs.new_empty(E, model.cfg.d_model)
    for r in range(int(occurrence.max()) + 1 if E else 0):
        ev = torch.nonzero(occurrence == r).squeeze(1)  # events of round r, one per user
        rows = user_row[ev]
        new, out = model.step(states.select(rows), item_vecs[ev], event_type[ev], timestamp[ev])
        states.assign(rows, new)
        interest[ev], prev[ev] = out.interest, out.prev_interest
    return states, StepOutput(interest=interest, prev_interest=prev)
