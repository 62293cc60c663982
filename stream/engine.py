"""The interest engine: a micro-batch of events in, new user records and interest updates out.

Nothing here touches Kafka or Faust: the live agents (stream/worker.py) and replays call the
same `Engine`, and tests call it directly. A batch goes through four stages:

    admit       one record at a time: decode, check, find the item's row (or dead-letter it)
    step        one batched model step for every user in the batch (a user's events in order)
    views       one ranking over the item matrix: each update's interests, shift, top-N, and
                why each recommendation (`because`: the recent events that most support it)
    ranks       replay only (prequential): the rank each event's item had just before it

and comes out as one record plus one `InterestUpdate` per user (per event with per_event).

An erasure (`UserErasure`, `currents forget`) in the batch drops the user's stored record and
the user's events before it: the user's outcome says `forgotten`, and any later events of the
batch start from a fresh state.
"""

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import orjson
import torch

from model.checkpoint import Checkpoint
from model.config import event_type_index
from model.interest import StepOutput, category_mass
from model.serving import step_events
from model.state import StateError, UserState
from schemas import BehaviorEvent, ErrorKind, InvalidMessage, UserErasure
from schemas.outputs import MAX_REASONS, SCHEMA_VERSION
from stream.items import ItemMatrix
from stream.records import RECENT, UserRecord, decode_keyed_event

__all__ = ["Engine", "Incoming", "UserOutcome"]

DECIMALS = 6  # of scores, interests and shifts in published views


@dataclass(frozen=True)
class Incoming:
    """A valid event of the batch, with where it came from."""

    event: BehaviorEvent | UserErasure
    partition: int
    offset: int
    appended_at: float  # Kafka record timestamp, seconds: the start of the update's latency
    item_row: int  # the item's row in the item matrix when the event was admitted (-1: erasure)
    type_index: int  # the event type's embedding row (-1: erasure)


@dataclass(frozen=True)
class UserOutcome:
    user_id: str
    record: bytes | None  # the new state-table value; None: the user has none (forgotten)
    updates: list[bytes]  # InterestUpdate JSON: one, or one per event with per_event
    last: Incoming  # the user's last event (or erasure) in the batch
    applied: int  # events newly applied; 0 when re-publishing after a redelivery
    interests: dict[str, float] = field(default_factory=dict)  # the last update's top categories
    forgotten: bool = False  # an erasure came: delete the stored record (and then write any)


@dataclass
class _Step:
    """A batch after the step stage: the arrays every later stage indexes (E events, G update
    groups, U stepped users)."""

    users: list[str]  # the stepped users, then the republished ones
    stepped: int  # how many of `users` were stepped
    events: list[Incoming]  # (E,) the stepped events, user by user, each user's in order
    user_of: np.ndarray  # (E,) each event's user
    head: np.ndarray  # (E,) each user's first event of the batch
    ends: np.ndarray  # (E,) the event ends an update's group of events
    items: np.ndarray  # (E,) each event's item row
    first_seen: np.ndarray  # (U,) users with no event before the batch
    before: torch.Tensor  # (U, d) each user's interests before the batch
    out: StepOutput  # (E, d) interests after, and before, each event
    records: list[UserRecord]  # (U,) the stepped users' new records

    @property
    def last(self) -> np.ndarray:
        """(G,) the event that ends each group."""
        return np.flatnonzero(self.ends)

    @property
    def starts(self) -> np.ndarray:
        """(G,) the event that starts each group."""
        last = self.last
        return np.append(0, last[:-1] + 1)[: len(last)]

    @property
    def position(self) -> np.ndarray:
        """(E,) each event's position among its user's events of the batch."""
        return np.arange(len(self.events)) - np.flatnonzero(self.head)[self.user_of]

    @property
    def after_group(self) -> np.ndarray:
        """(E,) events that follow a group of the same user's events (so an update)."""
        return np.append(False, self.ends[:-1])[: len(self.events)] & ~self.head


class Engine:
    def __init__(
        self,
        checkpoint: Checkpoint,
        items: ItemMatrix,
        top_n: int = 10,
        top_categories: int = 5,
        per_event: bool = False,
        prequential: bool = False,
        explain: bool = True,
    ):
        """per_event: one update per event instead of one per user and batch, so a replay's
        outputs do not depend on how its batches happened to form. prequential: each event
        also gets the rank its item had in the user's recommendations just before it.
        explain: each recommendation cites the recent events that most support it."""
        self.checkpoint = checkpoint
        self.model = checkpoint.model
        self.items = items
        self.top_n = top_n
        self.top_categories = top_categories
        self.device = items.device
        self.per_event = per_event
        self.prequential = prequential
        self.explain = explain
        self.duplicates = 0  # events dropped because their event_id was already applied
        self.state_resets = 0  # unreadable stored states replaced by a fresh one

    def admit(
        self, key: bytes | None, value: bytes, partition: int, offset: int, timestamp: float
    ) -> Incoming:
        """Decode and check one events-topic record; raise InvalidMessage to dead-letter it.

        Events for items the catalog does not have are rejected (`unknown_item`): the item has
        no vector to learn from. Publish catalog upserts before events that refer to them; the
        dead letter keeps the event for a replay once the item exists.
        """
        event = decode_keyed_event(key, value)
        if isinstance(event, UserErasure):
            return Incoming(event, partition, offset, timestamp, -1, -1)
        row = self.items.rows.get(event.item_id)
        if row is None:
            raise InvalidMessage(
                ErrorKind.UNKNOWN_ITEM, f"item {event.item_id!r} is not in the catalog"
            )
        try:
            type_index = event_type_index(event.event_type.value)
        except ValueError as error:
            raise InvalidMessage(ErrorKind.SCHEMA_VIOLATION, str(error)) from None
        return Incoming(event, partition, offset, timestamp, row, type_index)

    @torch.inference_mode()
    def apply(
        self, stored: Mapping[str, bytes | None], batch: Sequence[Incoming]
    ) -> list[UserOutcome]:
        """Apply a batch (in partition order) to the users' stored records."""
        records, fresh, redelivered, forgotten = self._sort(stored, batch)
        republished = [user for user in redelivered if user not in fresh]  # nothing new in them
        outcomes = []
        if fresh or republished:
            outcomes = self._outcomes(records, fresh, redelivered, republished)
        # a forgotten user's later events (if any) started from a fresh state
        outcomes = [replace(o, forgotten=o.user_id in forgotten) for o in outcomes]
        return outcomes + [
            UserOutcome(user, None, [], erasure, 0, forgotten=True)
            for user, erasure in forgotten.items()
            if user not in fresh
        ]

    def _outcomes(
        self,
        records: dict[str, UserRecord],
        fresh: dict[str, list[Incoming]],
        redelivered: dict[str, list[Incoming]],
        republished: list[str],
    ) -> list[UserOutcome]:
        """Step and rank the fresh events; each stepped or republished user's outcome."""
        step = self._step(records, fresh, republished)
        rows, baseline, rank_row, seen = self._rows(step, records, fresh)
        ranking = self._rank(rows, shown=baseline.start, baselines=len(baseline))
        ranks = self._ranks(step, ranking, rank_row)
        because = self._shown_because(step, records, seen, ranking) if self.explain else None
        views = self._views(ranking, self._shift_from(step, baseline), because)
        updates: dict[str, list[bytes]] = {}
        interests: dict[str, dict[str, float]] = {}
        now, version = time.time(), self.checkpoint.version
        for view, covered in zip(views, self._covered(step, redelivered), strict=True):
            last = covered[-1]
            user = last.event.user_id
            # the update id names the last event the view includes: a re-published update
            # (a user with nothing new) shows the stored record, and keeps its id
            at = last if user in fresh else records[user]
            update = {
                "schema_version": SCHEMA_VERSION,
                "update_id": f"{version}:{user}:{at.partition}:{at.offset}",
                "user_id": user,
                "model_version": version,
                "events": [_event_ref(i, ranks.get(id(i))) for i in covered],
                **view,
                "latency_ms": max(0.0, (now - last.appended_at) * 1000),
            }
            updates.setdefault(user, []).append(orjson.dumps(update))
            interests[user] = view["interests"]
        outcomes = []
        for user, record in zip(
            step.users, step.records + [records[u] for u in republished], strict=True
        ):
            applied = fresh.get(user, [])
            last_event = max(applied or redelivered[user], key=_offset)
            outcomes.append(
                UserOutcome(
                    user,
                    record.to_bytes(),
                    updates[user],
                    last_event,
                    len(applied),
                    interests[user],
                )  # fmt: skip
            )
        return outcomes

    def _sort(self, stored: Mapping[str, bytes | None], batch: Sequence[Incoming]):
        """The users' stored records; per user, the events to apply now (fresh), and those
        applied before a crash (redelivered: to re-publish). Repeated event ids are dropped.
        A user's erasure empties the record and drops the user's events before it; the users
        erased, with their last erasure, come last."""
        by_user: dict[str, list[Incoming]] = {}
        for incoming in batch:
            by_user.setdefault(incoming.event.user_id, []).append(incoming)
        records = {user: self._record(stored.get(user)) for user in by_user}
        fresh: dict[str, list[Incoming]] = {}
        redelivered: dict[str, list[Incoming]] = {}
        forgotten: dict[str, Incoming] = {}
        for user, events in by_user.items():
            record, seen = records[user], set(records[user].recent_events)
            for incoming in events:
                if isinstance(incoming.event, UserErasure):
                    record = records[user] = self._record(None)
                    seen = set()
                    fresh.pop(user, None)
                    redelivered.pop(user, None)
                    forgotten[user] = incoming
                elif record.covers(incoming.partition, incoming.offset):
                    redelivered.setdefault(user, []).append(incoming)
                elif incoming.event.event_id in seen:
                    self.duplicates += 1
                else:
                    fresh.setdefault(user, []).append(incoming)
                    seen.add(incoming.event.event_id)
        return records, fresh, redelivered, forgotten

    def _step(
        self,
        records: dict[str, UserRecord],
        fresh: dict[str, list[Incoming]],
        republished: list[str],
    ) -> _Step:
        """One batched model step over every fresh event; the stepped users' new records."""
        stepped = list(fresh)
        events = [incoming for user in stepped for incoming in fresh[user]]
        user_of = np.repeat(np.arange(len(stepped)), [len(fresh[user]) for user in stepped])
        head = np.ones(len(events), dtype=bool)  # each user's first event of the batch
        head[1:] = user_of[1:] != user_of[:-1]
        items = np.array([incoming.item_row for incoming in events], dtype=np.int64)
        states = self._states([records[user].state for user in stepped])
        first_seen = (states.count == 0).numpy(force=True)  # users with no event before
        before = states.interest.clone()  # (U, d) each user's interests before the batch
        if stepped:
            states, out = step_events(
                self.model,
                states,
                torch.from_numpy(user_of).to(self.device),
                self.items.reps[torch.from_numpy(items).to(self.device)],
                torch.tensor([i.type_index for i in events], device=self.device),
                torch.tensor(
                    [i.event.timestamp.timestamp() for i in events],
                    dtype=torch.float64,
                    device=self.device,
                ),
            )
        else:
            none = before.new_zeros(0, self.model.cfg.window)
            out = StepOutput(interest=before, prev_interest=before, attention=none)  # no rows
        # An update follows each group of a user's consecutive events: every event (per_event)
        # or all of the user's events in the batch; then one per republished user.
        ends = np.append(head[1:], True)[: len(events)] | self.per_event
        new_records = self._new_records(records, fresh, states, out, before)
        return _Step(
            stepped + republished, len(stepped), events, user_of, head, ends, items,
            first_seen, before, out, new_records,
        )  # fmt: skip

    def _covered(self, step: _Step, redelivered: dict[str, list[Incoming]]) -> list[list[Incoming]]:
        """The events each update covers, in the order of the shown rows. A user's first update
        of the batch also covers the user's events redelivered after a crash: applied before
        it, their own updates may never have been sent."""
        events, starts = step.events, step.starts
        covered = [events[start : end + 1] for start, end in zip(starts, step.last, strict=True)]
        covered = [
            sorted(redelivered.get(c[0].event.user_id, []) + c, key=_offset) if first else c
            for c, first in zip(covered, step.head[starts], strict=True)
        ]
        return covered + [sorted(redelivered[u], key=_offset) for u in step.users[step.stepped :]]

    def _rows(self, step: _Step, records: dict[str, UserRecord], fresh: dict[str, list[Incoming]]):
        """What to rank the items for, a row each: first what each update shows (the interests
        after its group); then each user's interests before the batch (the baseline of the
        user's first shift, and the ranking the user's first event met); then, with
        prequential ranks, the ranking each event inside a group met. A row's target is the
        item whose rank it checks: the ranking an event met is the update before it, where
        there is one. Returns the rows, the baselines' rows, and (prequential) each event's
        rank row."""
        prequential, last, items = self.prequential, step.last, step.items
        republished = step.users[step.stepped :]
        seen = _Seen(
            self.items.rows,
            [records[user] for user in step.users],
            [fresh.get(user, ()) for user in step.users],
        )
        rows = _Rows()
        rows.add(
            step.out.interest[torch.from_numpy(last)],
            seen.before(step.user_of[last], step.position[last] + 1),
            np.where(np.append(step.after_group[1:], False), np.roll(items, -1), -1)[last]
            if prequential else None,
        )  # fmt: skip
        everyone = np.arange(len(step.users))
        before_batch = step.before
        if republished:
            kept = self._states([records[user].state for user in republished])
            rows.add(kept.interest, seen.before(everyone[step.stepped :], 0))
            before_batch = torch.cat(
                [step.before, self._prev([records[u].prev_interest for u in republished])]
            )
        baseline = rows.add(
            before_batch,
            seen.before(everyone, 0),
            # a stepped user's first event is ranked here; a republished user has none
            np.append(np.where(step.first_seen, -1, items[step.head]),
                      np.full(len(republished), -1))
            if prequential else None,
        )  # fmt: skip
        rank_row = self._prequential_rows(step, rows, baseline, seen) if prequential else None
        return rows, baseline, rank_row, seen

    def _shown_because(
        self, step: _Step, records: dict[str, UserRecord], seen: "_Seen", ranking: "_Ranking"
    ) -> list[list[list]]:
        """`because` of every shown row: a stepped group's from the attention its last event
        gave, a republished user's recomputed from the stored state (the same weights)."""
        last = step.last
        attention = step.out.attention[torch.from_numpy(last)]
        window = seen.window(step.user_of[last], step.position[last] + 1, self.model.cfg.window)
        republished = step.users[step.stepped :]
        if republished:
            kept = self._states([records[user].state for user in republished])
            attention = torch.cat([attention, self.model.window_attention(kept)])
            everyone = np.arange(step.stepped, len(step.users))
            window = np.concatenate([window, seen.window(everyone, 0, self.model.cfg.window)])
        return self._because(attention, window, seen, ranking.top_items)

    def _because(
        self,
        attention: torch.Tensor,
        window: np.ndarray,
        seen: "_Seen",
        top: torch.Tensor,
        encoded: bool = True,
    ) -> list[list[list]]:
        """For each row and recommended item, up to MAX_REASONS events of the row's window,
        strongest support first. An event's support for an item is the weight the interest
        gave the event's memory slot (its attention; the newest event's slot also reaches the
        interest directly, through the residual around the attention: +1) times how the
        event's item scores against the recommended one: what the model drew on, and how much
        of it points at that item.

        attention (R, K) and window (R, K) (indices of `seen`'s events, -1: none) oldest
        first; top (R, n) recommended item rows. Events whose item left the matrix, or whose
        slot the state does not hold, are not cited. Each reason is a dict, or with `encoded`
        its JSON, made once however many recommendations and updates cite it."""
        item_rows = seen.item_rows(window)  # (R, K), -1: none
        at, reps = np.maximum(item_rows, 0), self.items.reps
        if reps.device.type == "cpu":  # numpy's gathers and matmul: 2x faster here than torch's
            reps = reps.numpy()
            similarity = reps[top.numpy()] @ reps[at].transpose(0, 2, 1)  # (R, n, K)
        else:  # only the similarities leave the device
            similarity = (reps[top] @ reps[torch.from_numpy(at).to(reps.device)].mT).numpy(
                force=True
            )
        # The rest in numpy on the CPU: it sorts short rows 3x faster than torch's topk picks
        # from them, and each of its calls costs less overhead on these small arrays.
        weights = attention.numpy(force=True).copy()
        usable = (item_rows >= 0) & (weights > 0)
        weights[:, -1] += 1.0
        support = np.where(usable[:, None, :], weights[:, None, :] * similarity, -np.inf)
        strongest = np.argsort(-support, axis=-1)[..., :MAX_REASONS]  # (R, n, MAX_REASONS)
        rows, items, slots = support.shape
        # as flat indices: a tenth of take_along_axis's cost on small arrays
        cited = window.ravel()[strongest + (np.arange(rows) * slots)[:, None, None]]
        flat = strongest + (np.arange(rows * items) * slots).reshape(rows, items, 1)
        finite = np.isfinite(support.ravel()[flat])
        # The lists are built by numpy, not one Python loop per recommendation (a per-event
        # replay has thousands of rows per batch): each cited event's reason once, gathered
        # into place; an item citing fewer events has them first (sorted), then is cut.
        reasons = np.empty(len(seen.refs) + 1, dtype=object)  # [-1], no event: None
        is_cited = np.zeros(len(reasons), dtype=bool)
        is_cited[cited[finite]] = True
        used = np.flatnonzero(is_cited[:-1])
        reason = _encoded_reason if encoded else _reason
        reasons[used] = [reason(*seen.refs[e]) for e in used.tolist()]
        out = reasons[cited].tolist()
        counts = finite.sum(-1)  # (R, n)
        short_rows, short_items = np.nonzero(counts < finite.shape[-1])
        for row, item in zip(short_rows.tolist(), short_items.tolist(), strict=True):
            out[row][item] = out[row][item][: counts[row, item]]
        return out

    def _prequential_rows(self, step: _Step, rows: "_Rows", baseline: range, seen: "_Seen"):
        """(E,) the row each event's rank is read from: its user's baseline for a first event,
        the update before it after a group, else a row added here for the ranking it met."""
        head, after_group, user_of = step.head, step.after_group, step.user_of
        rank_row = np.empty(len(step.events), dtype=np.int64)
        rank_row[head] = baseline.start + user_of[head]
        group = np.cumsum(step.ends) - step.ends  # each event's group; its update is row `group`
        rank_row[after_group] = group[after_group] - 1
        inside = np.flatnonzero(~head & ~after_group)
        rank_row[inside] = rows.add(
            step.out.prev_interest[torch.from_numpy(inside)],
            seen.before(user_of[inside], step.position[inside]),
            step.items[inside],
        ).start + np.arange(len(inside))  # fmt: skip
        return rank_row

    def _shift_from(self, step: _Step, baseline: range) -> np.ndarray:
        """Each update's shift is measured from the update before it, or the user's baseline."""
        starts, republished = step.starts, len(step.users) - step.stepped
        return np.concatenate(
            [
                np.where(
                    step.head[starts],
                    baseline.start + step.user_of[starts],
                    np.arange(len(step.last)) - 1,
                ),
                baseline.start + step.stepped + np.arange(republished),
            ]
        ).astype(np.int64)

    def _ranks(self, step: _Step, ranking: "_Ranking", rank_row) -> dict[int, int]:
        """id(incoming) -> its prequential rank; a user's first event ever has none (no
        recommendations before it)."""
        if ranking.ranks is None:
            return {}
        unranked = step.head & step.first_seen[step.user_of]
        return {
            id(incoming): rank
            for incoming, rank, skip in zip(
                step.events, ranking.ranks[rank_row].tolist(), unranked.tolist(), strict=True
            )
            if not skip
        }

    def _new_records(
        self,
        records: dict[str, UserRecord],
        fresh: dict[str, list[Incoming]],
        states: UserState,
        out: StepOutput,
        before: torch.Tensor,
    ) -> list[UserRecord]:
        """The stepped users' new records, in `fresh` order."""
        if not fresh:
            return []
        # the interests the user's next update's shift is measured from: before its last one
        if self.per_event:
            last = np.cumsum([len(events) for events in fresh.values()]) - 1
            before = out.prev_interest[torch.from_numpy(last)]
        return [
            UserRecord(
                state=state,
                prev_interest=prev.tobytes(),
                partition=applied[-1].partition,
                offset=applied[-1].offset,
                recent_events=(
                    *records[user].recent_events, *(i.event.event_id for i in applied)
                )[-RECENT:],
                recent_items=(
                    *records[user].recent_items, *(i.event.item_id for i in applied)
                )[-RECENT:],
                recent_types=(
                    *records[user].recent_types, *(i.event.event_type for i in applied)
                )[-RECENT:],
            )
            for (user, applied), state, prev in zip(
                fresh.items(), self.checkpoint.encode_states(states),
                before.numpy(force=True).astype("<f4"), strict=True,
            )
        ]  # fmt: skip

    @torch.inference_mode()
    def describe(self, stored: bytes) -> dict:
        """A user's current interests and recommendations, from the stored record alone."""
        record = self._record(stored)
        state = self._states([record.state])
        window = _Seen(self.items.rows, [record], [()]).before(np.zeros(1, int), 0)
        rows = _Rows()
        rows.add(state.interest, window)
        rows.add(self._prev([record.prev_interest]), window)
        ranking = self._rank(rows, shown=1, baselines=1)
        because = None
        if self.explain and record.state:
            seen = _Seen(self.items.rows, [record], [()])
            events = seen.window(np.zeros(1, int), 0, self.model.cfg.window)
            attention = self.model.window_attention(state)
            because = self._because(attention, events, seen, ranking.top_items, encoded=False)
        view = next(self._views(ranking, np.array([1]), because))
        return {"events_applied": int(state.count[0]), **view}

    def _rank(self, rows: "_Rows", shown: int, baselines: int) -> "_Ranking":
        """Score every item for every row: the top-N of the first `shown` rows, the category
        distribution of those and the next `baselines`, and each row's target's rank.

        A row may not recommend free rows of the matrix nor the items in its window; its
        target's rank counts the items it may recommend that score higher (the target never
        outranks itself, excluded or not). Categories come from all items, hidden ones too.
        """
        interest, windows, targets = rows.stacked()
        scores = interest @ self.items.reps.T  # (rows, items)
        distribution = category_mass(scores[: shown + baselines], self.items.membership())
        target_scores = None
        ranked = targets >= 0
        if ranked.any():
            target = torch.from_numpy(np.maximum(targets, 0)).to(self.device).unsqueeze(1)
            target_scores = scores.gather(1, target)
            target_scores[torch.from_numpy(~ranked).to(self.device)] = math.inf
        if len(self.items) < len(self.items.alive):  # rows of deleted items, or spare ones
            scores.masked_fill_(~self.items.alive, -math.inf)
        hidden_row, hidden_slot = np.nonzero(windows >= 0)
        if len(hidden_row):  # one scatter for the whole batch
            at = torch.from_numpy(hidden_row).to(self.device)
            scores[
                at, torch.from_numpy(windows[hidden_row, hidden_slot]).to(self.device)
            ] = -math.inf
        top = scores[:shown].topk(min(self.top_n, scores.shape[1]), dim=-1)
        ranks = None
        if target_scores is not None and scores.device.type == "cpu":
            ranks = (scores.numpy() > target_scores.numpy()).sum(1) + 1  # numpy counts 2x faster
        elif target_scores is not None:  # only the counts leave the device
            ranks = ((scores > target_scores).sum(1) + 1).cpu().numpy()
        return _Ranking(top.values, top.indices, distribution, ranks)

    def _views(
        self,
        ranking: "_Ranking",
        shift_from: np.ndarray,
        because: list[list[list]] | None = None,
    ) -> Iterator[dict]:
        """Each shown row's update body: top interests, their shift, recommendations (with
        `because`, each item's reasons, where given).

        shift_from: for each shown row, the row whose category distribution its shift is
        measured from (a baseline, or the row before for a user's consecutive updates). Rows
        become Python objects one at a time: a per-event replay has thousands of them per
        batch, and every container alive at once makes each garbage collection longer."""
        shown = len(ranking.top_scores)
        dist = ranking.distribution[:shown]
        shift = dist - ranking.distribution[torch.from_numpy(shift_from)]
        names = self.items.category_names()
        k = min(self.top_categories, len(names))
        shares, top = dist.topk(k, dim=-1)  # (B, k) the largest shares
        moved = torch.cat([top, shift.abs().topk(k, dim=-1).indices], dim=1)  # ... and movers
        shifts = _rounded(shift.gather(1, moved))
        shares, top, moved = _rounded(shares), top.numpy(force=True), moved.numpy(force=True)
        scores, items = _rounded(ranking.top_scores), ranking.top_items.numpy(force=True)
        item_id = self.items.item_id
        for row in range(shown):
            row_scores, row_items = scores[row].tolist(), items[row].tolist()
            if row_scores and not math.isfinite(row_scores[-1]):  # fewer items than top_n
                row_items = row_items[: sum(map(math.isfinite, row_scores))]
            if because is None:
                recommendations = [
                    {"item_id": item_id(i), "score": s}
                    for s, i in zip(row_scores, row_items, strict=False)
                ]
            else:
                recommendations = [
                    {"item_id": item_id(i), "score": s, "because": b}
                    for s, i, b in zip(row_scores, row_items, because[row], strict=False)
                ]
            yield {
                "interests": _by_name(names, top[row], shares[row]),
                "interest_shift": _by_name(names, moved[row], shifts[row]),
                "recommendations": recommendations,
            }

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
        return torch.from_numpy(np.asarray(rows, dtype=np.float32).reshape(len(rows), d)).to(
            self.device
        )


_SLOTS = np.arange(RECENT)


class _Seen:
    """The users' recent events, each user's stored ones then the batch's: their items as rows
    of the item matrix (-1: no longer in it), what a ranking made at any point keeps out of
    the recommendations (the last RECENT items the user had seen then), and the events
    themselves as `because` cites them."""

    def __init__(
        self,
        matrix_rows: Mapping[str, int],
        records: Sequence[UserRecord],
        applied: Sequence[Sequence[Incoming]],
    ):
        flat: list[int] = []  # each user's items, after RECENT -1s: a window never underflows
        # the event at each position of `flat`: (event id, item id, type), None where unknown
        self.refs: list[tuple | None] = []
        starts = []  # where each user's batch events start in `flat`
        for record, events in zip(records, applied, strict=True):
            stored = record.recent_items
            flat += [-1] * RECENT + [matrix_rows.get(item_id, -1) for item_id in stored]
            ids, types = (
                _newest(v, len(stored)) for v in (record.recent_events, record.recent_types)
            )
            self.refs += [None] * RECENT
            self.refs += zip(ids, stored, types, strict=True)
            starts.append(len(flat))
            flat += [incoming.item_row for incoming in events]
            self.refs += [(i.event.event_id, i.event.item_id, i.event.event_type) for i in events]
        self._flat = np.array(flat, dtype=np.int64)
        self._known = np.array(
            [ref is not None and ref[0] is not None for ref in self.refs], dtype=bool
        )
        self._starts = np.array(starts, dtype=np.int64)

    def window(self, user: np.ndarray, position: np.ndarray | int, size: int) -> np.ndarray:
        """(len(user), size) positions of each user's last `size` events just before its batch
        event at `position`, oldest first (-1: no known event there)."""
        end = self._starts[user] + position
        at = (end - min(size, RECENT))[:, None] + np.arange(min(size, RECENT))
        at = np.where(self._known[at], at, -1)
        if size > RECENT:  # older slots than the record keeps events of
            at = np.pad(at, ((0, 0), (size - RECENT, 0)), constant_values=-1)
        return at

    def item_rows(self, at: np.ndarray) -> np.ndarray:
        """The item-matrix rows of the events at positions `at` (-1 stays -1)."""
        return np.where(at >= 0, self._flat[np.maximum(at, 0)], -1)

    def before(self, user: np.ndarray, position: np.ndarray | int) -> np.ndarray:
        """(len(user), RECENT): each user's window just before its batch event at `position`
        (0: the stored window; a user's event count: after all of them)."""
        end = self._starts[user] + position
        return self._flat[(end - RECENT)[:, None] + _SLOTS]


class _Rows:
    """Rows to rank the items for, added block by block: an interest vector each, the window
    of items it keeps out, and a target item whose rank it checks (-1: none)."""

    def __init__(self):
        self._interest: list[torch.Tensor] = []
        self._windows: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._count = 0

    def add(
        self, interest: torch.Tensor, windows: np.ndarray, targets: np.ndarray | None = None
    ) -> range:
        """Append a block of rows; returns their row numbers."""
        n = len(interest)
        if targets is None:
            targets = np.full(n, -1)
        if not len(windows) == len(targets) == n:
            raise ValueError(f"{n} rows with {len(windows)} windows and {len(targets)} targets")
        self._interest.append(interest)
        self._windows.append(windows)
        self._targets.append(np.asarray(targets, dtype=np.int64))
        self._count += n
        return range(self._count - n, self._count)

    def stacked(self) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """(rows, d) interests, (rows, RECENT) windows, (rows,) targets."""
        return torch.cat(self._interest), *map(np.concatenate, (self._windows, self._targets))


@dataclass(frozen=True)
class _Ranking:
    top_scores: torch.Tensor  # (shown, n) best first; -inf past the recommendable items
    top_items: torch.Tensor  # (shown, n) their item-matrix rows
    distribution: torch.Tensor  # (shown + baselines, C) category distribution of each row
    ranks: np.ndarray | None  # (rows,) each row's target's rank; None: no row has a target


def _newest(values: tuple, n: int) -> tuple:
    """The last n of `values`, padded with None at the old end: fields a record kept for fewer
    of its recent events align with them at the newest end."""
    return (None,) * (n - len(values)) + tuple(values[max(0, len(values) - n) :] if n else ())


def _reason(event_id: str, item_id: str, kind: str | None) -> dict:
    reason = {"event_id": event_id, "item_id": item_id}
    if kind is not None:
        reason["event_type"] = kind
    return reason


def _encoded_reason(event_id: str, item_id: str, kind: str | None) -> orjson.Fragment:
    """A reason as the JSON orjson writes in its place in an update."""
    return orjson.Fragment(orjson.dumps(_reason(event_id, item_id, kind)))


def _offset(incoming: Incoming) -> int:
    return incoming.offset


def _rounded(values: torch.Tensor) -> np.ndarray:
    """`values` on the CPU, rounded to DECIMALS places: shares and shifts in [-1, 1] and scores
    of a few units, computed in float32, are not more precise than that, and every extra digit
    costs bytes in every update and time in JSON encoding."""
    return values.double().round(decimals=DECIMALS).numpy(force=True)


def _by_name(names: list[str], categories: np.ndarray, values: np.ndarray) -> dict[str, float]:
    return dict(zip([names[c] for c in categories.tolist()], values.tolist(), strict=True))


def _event_ref(incoming: Incoming, rank: int | None) -> dict:
    event = incoming.event
    ref = {
        "event_id": event.event_id,
        "event_type": event.event_type,  # orjson writes the enum's value, the time as ISO 8601
        "timestamp": event.timestamp,
        "partition": incoming.partition,
        "offset": incoming.offset,
    }
    if rank is not None:
        ref["rank"] = rank
    return ref
