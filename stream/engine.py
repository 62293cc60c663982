"""The interest engine: a micro-batch of events in, new user records and interest updates out.

Nothing here touches Kafka or Faust: the live agents (stream/app.py) and replays call the same
`Engine`, and tests call it directly. One `apply` is one batched `step` for every user in the
batch (a user with several events is stepped in order), one ranking over the item matrix, and
one record plus one `InterestUpdate` per user.
"""

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import orjson
import torch

from model.checkpoint import Checkpoint
from model.config import event_type_index
from model.interest import category_distribution, category_mass, rank_scores
from model.serving import step_events
from model.state import StateError, UserState
from schemas import BehaviorEvent, ErrorKind, InvalidMessage
from schemas.outputs import SCHEMA_VERSION
from stream.items import ItemMatrix
from stream.records import RECENT, UserRecord, decode_keyed_event

__all__ = ["Engine", "Incoming", "UserOutcome"]

DECIMALS = 6  # of scores, interests and shifts in published views


@dataclass(frozen=True)
class Incoming:
    """A valid event of the batch, with where it came from."""

    event: BehaviorEvent
    partition: int
    offset: int
    appended_at: float  # Kafka record timestamp, seconds: the start of the update's latency
    item_row: int  # the item's row in the item matrix when the event was admitted
    type_index: int  # the event type's embedding row
    source: object = None  # the Faust event, so the state write lands in its partition


@dataclass(frozen=True)
class UserOutcome:
    user_id: str
    record: bytes  # the new state-table value
    updates: list[bytes]  # InterestUpdate JSON: one, or one per event with per_event
    last: Incoming  # the user's last event in the batch
    applied: int  # events newly applied; 0 when re-publishing after a redelivery


class Engine:
    def __init__(
        self,
        checkpoint: Checkpoint,
        items: ItemMatrix,
        top_n: int = 10,
        top_categories: int = 5,
        per_event: bool = False,
        prequential: bool = False,
    ):
        """per_event: one update per event instead of one per user and batch, so a replay's
        outputs do not depend on how its batches happened to form. prequential: each event
        also gets the rank its item had in the user's recommendations just before it."""
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.items = items
        self.top_n = top_n
        self.top_categories = top_categories
        self.device = items.device
        self.per_event = per_event
        self.prequential = prequential
        self.duplicates = 0  # events dropped because their event_id was already applied
        self.state_resets = 0  # unreadable stored states replaced by a fresh one

    def admit(
        self,
        key: bytes | None,
        value: bytes,
        partition: int,
        offset: int,
        timestamp: float,
        source: object = None,
    ) -> Incoming:
        """Decode and check one events-topic record; raise InvalidMessage to dead-letter it.

        Events for items the catalog does not have are rejected (`unknown_item`): the item has
        no vector to learn from. Publish catalog upserts before events that refer to them; the
        dead letter keeps the event for a replay once the item exists.
        """
        event = decode_keyed_event(key, value)
        row = self.items.rows.get(event.item_id)
        if row is None:
            raise InvalidMessage(
                ErrorKind.UNKNOWN_ITEM, f"item {event.item_id!r} is not in the catalog"
            )
        try:
            type_index = event_type_index(event.event_type.value)
        except ValueError as error:
            raise InvalidMessage(ErrorKind.SCHEMA_VIOLATION, str(error)) from None
        return Incoming(event, partition, offset, timestamp, row, type_index, source)

    @torch.inference_mode()
    def apply(
        self, stored: Mapping[str, bytes | None], batch: Sequence[Incoming]
    ) -> list[UserOutcome]:
        """Apply a batch (in partition order) to the users' stored records."""
        by_user: dict[str, list[Incoming]] = {}
        for incoming in batch:
            by_user.setdefault(incoming.event.user_id, []).append(incoming)
        records = {user: self._record(stored.get(user)) for user in by_user}

        fresh: dict[str, list[Incoming]] = {}  # events to apply now
        redelivered: dict[str, list[Incoming]] = {}  # applied before a crash: re-publish
        for user, events in by_user.items():
            record, seen = records[user], set(records[user].recent_events)
            for incoming in events:
                if record.covers(incoming.partition, incoming.offset):
                    redelivered.setdefault(user, []).append(incoming)
                elif incoming.event.event_id in seen:
                    self.duplicates += 1
                else:
                    fresh.setdefault(user, []).append(incoming)
                    seen.add(incoming.event.event_id)

        stepped = list(fresh)
        states = self._states([records[user].state for user in stepped])
        first_seen = (states.count == 0).tolist()  # users whose first event is in this batch
        prev = states.interest.clone()  # (U, d) before this batch
        events = [incoming for user in stepped for incoming in fresh[user]]
        if stepped:
            row_of = {user: row for row, user in enumerate(stepped)}
            states, out = step_events(
                self.model,
                states,
                torch.tensor([row_of[i.event.user_id] for i in events], device=self.device),
                self.items.reps[torch.tensor([i.item_row for i in events], device=self.device)],
                torch.tensor([i.type_index for i in events], device=self.device),
                torch.tensor(
                    [i.event.timestamp.timestamp() for i in events],
                    dtype=torch.float64,
                    device=self.device,
                ),
            )
        blobs = self.checkpoint.encode_states(states) if stepped else []
        # items each event's user had seen just before it, and just after it
        seen_before, seen_after = [], []
        for user in stepped:
            recent = records[user].recent_items
            for incoming in fresh[user]:
                seen_before.append(recent)
                recent = (*recent, incoming.event.item_id)[-RECENT:]
                seen_after.append(recent)
        new_records = []
        last = -1
        for row, user in enumerate(stepped):
            record, applied = records[user], fresh[user]
            last += len(applied)
            # the interests the record's shift is measured from: before its last update
            before = out.prev_interest[last] if self.per_event else prev[row]
            new_records.append(
                UserRecord(
                    state=blobs[row],
                    prev_interest=before.cpu().numpy().astype("<f4").tobytes(),
                    partition=applied[-1].partition,
                    offset=applied[-1].offset,
                    recent_events=(*record.recent_events, *(i.event.event_id for i in applied))[
                        -RECENT:
                    ],
                    recent_items=seen_after[last],
                )
            )

        # One update per user (live) or per event (replay), then one per user whose events were
        # all applied before a crash: re-published from the stored record.
        republished = [user for user in redelivered if user not in fresh]
        chained = None
        if self.per_event and events:
            interest, prev = out.interest, out.prev_interest
            chained = [row > 0 for user in stepped for row in range(len(fresh[user]))]
            covered = [[i] for i in events]
            recent = seen_after
            positions = [(i.partition, i.offset) for i in events]
        else:
            interest = states.interest
            covered = [
                sorted(redelivered.get(u, []) + fresh[u], key=lambda i: i.offset) for u in stepped
            ]
            recent = [r.recent_items for r in new_records]
            positions = [(r.partition, r.offset) for r in new_records]
        if republished:
            kept = self._states([records[user].state for user in republished])
            interest = torch.cat([interest, kept.interest])
            prev = torch.cat([prev, self._prev([records[u].prev_interest for u in republished])])
            if chained is not None:
                chained += [False] * len(republished)
        covered += [sorted(redelivered[u], key=lambda i: i.offset) for u in republished]
        recent += [records[u].recent_items for u in republished]
        # the update id names the last event the view includes: a re-published update keeps it
        positions += [(records[u].partition, records[u].offset) for u in republished]
        scored = self._scored(interest, recent)
        views = self._views(interest, prev, scored, chained)
        ranks: dict[int, int] = {}  # id(incoming) -> its prequential rank
        if self.prequential and events:
            reuse = (scored, chained) if self.per_event else None  # a view per event
            ranked = self._ranks(out.prev_interest, events, seen_before, reuse)
            firsts, start = set(), 0  # no recommendations before a user's first event
            for row, user in enumerate(stepped):
                if first_seen[row]:
                    firsts.add(start)
                start += len(fresh[user])
            ranks = {
                id(i): r for e, (i, r) in enumerate(zip(events, ranked, strict=True))
                if e not in firsts
            }  # fmt: skip

        updates: dict[str, list[bytes]] = {}
        now = time.time()
        for view, events_covered, (partition, offset) in zip(
            views, covered, positions, strict=True
        ):
            last_event = events_covered[-1]
            user = last_event.event.user_id
            update = {
                "schema_version": SCHEMA_VERSION,
                "update_id": f"{self.checkpoint.version}:{user}:{partition}:{offset}",
                "user_id": user,
                "model_version": self.checkpoint.version,
                "events": [_event_ref(i, ranks.get(id(i))) for i in events_covered],
                **view,
                "latency_ms": max(0.0, (now - last_event.appended_at) * 1000),
            }
            updates.setdefault(user, []).append(orjson.dumps(update))

        outcomes = []
        for user, record in zip(
            stepped + republished, new_records + [records[u] for u in republished], strict=True
        ):
            applied = fresh.get(user, [])
            last_event = max(applied or redelivered[user], key=lambda i: i.offset)
            outcomes.append(
                UserOutcome(user, record.to_bytes(), updates[user], last_event, len(applied))
            )
        return outcomes

    def _ranks(
        self,
        before: torch.Tensor,
        events: list[Incoming],
        seen: list[tuple[str, ...]],
        reuse: tuple[tuple[torch.Tensor, torch.Tensor], list[bool]] | None = None,
    ) -> list[int]:
        """Prequential check: where each event's item stood in the ranking the user had just
        before it (1 = top), among the items that ranking could recommend and the event's own.

        before (E, d): each event's interest before it; seen: the items then kept out. With
        `reuse`, the per-event views' `_scored` rows and their `chained` flags: a chained
        event's ranking just before it is the row before's, already scored."""
        if reuse is None:
            scores, exclude = self._scored(before, seen)
        else:
            after, chained = reuse
            heads = [e for e in range(len(events)) if not chained[e]]
            own = self._scored(before[heads], [seen[e] for e in heads])
            source = torch.arange(-1, len(events) - 1, device=self.device)  # the row before
            source[heads] = len(after[0]) + torch.arange(len(heads), device=self.device)
            scores, exclude = (torch.cat([a, b])[source] for a, b in zip(after, own, strict=True))
        target = torch.tensor([i.item_row for i in events], device=self.device)
        target_scores = scores.gather(1, target.unsqueeze(1))  # (E, 1)
        # the event's own item never outranks itself, excluded or not
        return (((scores > target_scores) & ~exclude).sum(1) + 1).tolist()

    @torch.inference_mode()
    def describe(self, stored: bytes) -> dict:
        """A user's current interests and recommendations, from the stored record alone."""
        record = self._record(stored)
        state = self._states([record.state])
        prev = self._prev([record.prev_interest])
        scored = self._scored(state.interest, [record.recent_items])
        view = self._views(state.interest, prev, scored)[0]
        return {"events_applied": int(state.count[0]), **view}

    def _views(
        self,
        interest: torch.Tensor,
        prev: torch.Tensor,
        scored: tuple[torch.Tensor, torch.Tensor],
        chained: list[bool] | None = None,
    ) -> list[dict]:
        """Rank items and categories for each row: interests, their shift, recommendations.

        scored: `_scored(interest, recent items)`. chained: per row, whether its `prev` is the
        row before's `interest` (a user's consecutive per-event updates), so that distribution
        is not computed twice."""
        if not len(interest):
            return []
        items = self.items
        scores, index = rank_scores(*scored, self.top_n)
        dist = category_mass(scored[0], items.membership())  # (B, C) after each row's events
        shift = dist - self._distribution_before(dist, prev, chained)
        names = items.category_names()
        k = min(self.top_categories, len(names))
        shares, top = dist.topk(k, dim=-1)  # (B, k) the largest shares
        shown = torch.cat([top, shift.abs().topk(k, dim=-1).indices], dim=1)  # ... and movers
        shares, shifts = _rounded(shares), _rounded(shift.gather(1, shown))
        top, shown = top.tolist(), shown.tolist()
        item_id = items.item_id
        views = []
        for row, (row_scores, row_index) in enumerate(
            zip(_rounded(scores), index.tolist(), strict=True)
        ):
            views.append(
                {
                    "interests": dict(zip([names[c] for c in top[row]], shares[row], strict=True)),
                    "interest_shift": dict(
                        zip([names[c] for c in shown[row]], shifts[row], strict=True)
                    ),
                    "recommendations": [
                        {"item_id": item_id(i), "score": s}
                        for s, i in zip(row_scores, row_index, strict=True)
                        if math.isfinite(s)
                    ],
                }
            )
        return views

    def _distribution_before(
        self, dist: torch.Tensor, prev: torch.Tensor, chained: list[bool] | None
    ) -> torch.Tensor:
        """The category distribution of each row's `prev` interest; a chained row's is the
        row before's `dist`, not computed again."""
        items = self.items
        if chained is None:
            return category_distribution(prev, items.reps, items.membership())
        before = dist.roll(1, 0)
        heads = ~torch.tensor(chained, device=self.device)
        before[heads] = category_distribution(prev[heads], items.reps, items.membership())
        return before

    def _scored(
        self, interest: torch.Tensor, recent: list[tuple[str, ...]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, rows) item scores of each interest row, and what each row may not recommend."""
        return interest @ self.items.reps.T, self._excluded(recent)

    def _excluded(self, recent: list[tuple[str, ...]]) -> torch.Tensor:
        """(B, rows) bool: what row b may not recommend: free rows and its recent items."""
        rows, width = self.items.rows, len(self.items.alive)
        exclude = (~self.items.alive).expand(len(recent), -1).clone()
        hidden = [
            b * width + row
            for b, ids in enumerate(recent)
            for row in map(rows.get, ids)
            if row is not None
        ]
        if hidden:  # one scatter for the whole batch
            exclude.view(-1)[torch.from_numpy(np.array(hidden)).to(self.device)] = True
        return exclude

    def _record(self, stored: bytes | None) -> UserRecord:
        if stored is None:
            return UserRecord(state=b"", prev_interest=b"")
        return UserRecord.from_bytes(stored)

    def _states(self, blobs: list[bytes]) -> UserState:
        """Decode stored states (b"" = new user) onto the device.

        A state this model cannot read (corrupt bytes) restarts that user from a fresh state
        rather than blocking every later event of theirs; `state_resets` counts it.
        """
        try:
            states = self.checkpoint.decode_states([b or None for b in blobs])
        except StateError:
            readable = []
            for blob in blobs:
                try:
                    self.checkpoint.decode_states([blob or None])
                    readable.append(blob or None)
                except StateError:
                    self.state_resets += 1
                    readable.append(None)
            states = self.checkpoint.decode_states(readable)
        return UserState(*(getattr(states, f.name).to(self.device) for f in fields(states)))

    def _prev(self, blobs: list[bytes]) -> torch.Tensor:
        d = self.checkpoint.config.d_model
        rows = [np.frombuffer(b, dtype="<f4") if b else np.zeros(d, "<f4") for b in blobs]
        return torch.from_numpy(np.stack(rows)).to(self.device)


def _rounded(values: torch.Tensor) -> list[list[float]]:
    """`values` as nested lists, to DECIMALS places: shares and shifts in [-1, 1] and scores
    of a few units, computed in float32, are not more precise than that, and every extra digit
    costs bytes in every update and time in JSON encoding."""
    return values.double().round(decimals=DECIMALS).tolist()


def _event_ref(incoming: Incoming, rank: int | None) -> dict:
    event = incoming.event
    ref = {
        "event_id": event.event_id,
        "event_type": event.event_type.value,
        "timestamp": event.timestamp.isoformat(),
        "partition": incoming.partition,
        "offset": incoming.offset,
    }
    if rank is not None:
        ref["rank"] = rank
    return ref
