"""The engine against the offline model: same states, same scores, whatever the batching."""

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig, event_type_index
from model.interest import InterestModel, top_n
from schemas import (
    BehaviorEvent,
    ErrorKind,
    EventType,
    InterestUpdate,
    InvalidMessage,
    Reason,
    UserErasure,
)
from stream.engine import Engine, Incoming
from stream.items import ItemMatrix, ItemVector
from stream.records import UserRecord

TEXT_DIM, ENCODER = 8, "test-encoder"
CATEGORIES = ["Jazz", "Space", "Chess"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(n_items=6, text_dim=TEXT_DIM, d_model=16, window=4, type_dim=4)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    warm = {f"item-{i}": i + 1 for i in range(5)}
    save_checkpoint(path, InterestModel(config), warm, CATEGORIES, ENCODER)
    return load_checkpoint(path)


def item_vectors(n: int, seed: int = 1) -> list[ItemVector]:
    rng = np.random.default_rng(seed)
    return [
        ItemVector(
            f"item-{i}", rng.normal(size=TEXT_DIM).astype("f4"), bytes(32), ENCODER,
            f"Item {i}", (CATEGORIES[i % 3],),
        )
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture()
def engine(checkpoint):
    items = ItemMatrix(checkpoint.model.item_representations, checkpoint.item_index, ENCODER)
    items.upsert(item_vectors(12))
    return Engine(checkpoint, items, top_n=5, top_categories=3)


def stream_of(users: int, events: int, seed: int = 3) -> list[tuple[BehaviorEvent, int, int]]:
    """(event, partition, offset) in partition order; a user always in one partition."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    offsets, out = {}, []
    for n in range(events):
        user = rng.randrange(users)
        partition = user % 2
        offsets[partition] = offsets.get(partition, -1) + 1
        event = BehaviorEvent(
            event_id=f"e{n}", user_id=f"u{user}", item_id=f"item-{rng.randrange(12)}",
            event_type=rng.choice(list(EventType)), timestamp=start + timedelta(minutes=n),
        )  # fmt: skip
        out.append((event, partition, offsets[partition]))
    return out


def admit(engine, event, partition, offset) -> Incoming:
    raw = event.model_dump_json().encode()
    return engine.admit(event.user_id.encode(), raw, partition, offset, 0.0)


def run(engine, stream, batch_size, stored=None):
    stored = {} if stored is None else stored
    updates = []
    for start in range(0, len(stream), batch_size):
        batch = [admit(engine, *item) for item in stream[start : start + batch_size]]
        for outcome in engine.apply(stored, batch):
            stored[outcome.user_id] = outcome.record
            updates += [InterestUpdate.model_validate_json(u) for u in outcome.updates]
    return stored, updates


def offline(checkpoint, engine, events: list[BehaviorEvent]):
    """One user's events through `step`, one at a time, as the model's own API does it."""
    model, state = checkpoint.model, checkpoint.model.fresh_state(1)
    with torch.inference_mode():
        for event in events:
            row = engine.items.rows[event.item_id]
            state, _ = model.step(
                state,
                engine.items.reps[[row]],
                torch.tensor([event_type_index(event.event_type.value)]),
                torch.tensor([event.timestamp.timestamp()], dtype=torch.float64),
            )
    return state


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_batched_engine_equals_offline_steps_and_covers_every_event_once(
    checkpoint, engine, batch_size
):
    stream = stream_of(users=9, events=60)
    stored, updates = run(engine, stream, batch_size)

    covered = [ref.event_id for update in updates for ref in update.events]
    assert sorted(covered) == sorted(e.event_id for e, _, _ in stream)
    for user in {e.user_id for e, _, _ in stream}:
        expected = offline(checkpoint, engine, [e for e, _, _ in stream if e.user_id == user])
        got = checkpoint.decode_states([UserRecord.from_bytes(stored[user]).state])
        assert torch.allclose(got.h, expected.h, atol=1e-5)
        assert torch.allclose(got.interest, expected.interest, atol=1e-5)
        last = [u for u in updates if u.user_id == user][-1]
        seen = [e.item_id for e, _, _ in stream if e.user_id == user][-32:]
        exclude = ~engine.items.alive.clone().unsqueeze(0)
        exclude[0, [engine.items.rows[i] for i in seen]] = True
        scores, index = top_n(expected.interest, engine.items.reps, 5, exclude)
        ranked = [
            (engine.items.item_id(i), s)
            for s, i in zip(scores[0].tolist(), index[0].tolist(), strict=True)
            if np.isfinite(s)
        ]
        assert [r.item_id for r in last.recommendations] == [i for i, _ in ranked]
        assert [r.score for r in last.recommendations] == pytest.approx(
            [s for _, s in ranked], abs=1e-5
        )
        assert sum(last.interests.values()) <= 1.0 + 5e-6  # shares are rounded to 6 places


def replay_engine(engine) -> Engine:
    return Engine(
        engine.checkpoint, engine.items, top_n=5, top_categories=3, per_event=True,
        prequential=True,
    )  # fmt: skip


def test_per_event_updates_do_not_depend_on_batching_and_match_one_event_batches(engine):
    stream = stream_of(users=9, events=60)
    _, live = run(engine, stream, 1)
    replayed = {
        size: {u.update_id: u for u in run(replay_engine(engine), stream, size)[1]}
        for size in (1, 7, 64)
    }
    for updates in replayed.values():
        assert updates.keys() == replayed[1].keys() and len(updates) == len(stream)
        assert all(len(u.events) == 1 for u in updates.values())
    by_event = {u.events[0].event_id: u for u in live}
    for size, updates in replayed.items():
        for update_id, update in updates.items():
            one = by_event[update.events[0].event_id]  # the live update of a 1-event batch
            assert [r.item_id for r in update.recommendations] == [
                r.item_id for r in one.recommendations
            ], size
            assert [r.score for r in update.recommendations] == pytest.approx(
                [r.score for r in one.recommendations], abs=1e-5
            )
            assert update.interest_shift == pytest.approx(one.interest_shift, abs=1e-5)
            assert update.events[0].rank == replayed[1][update_id].events[0].rank


def test_prequential_rank_is_the_items_place_in_the_ranking_just_before_the_event(
    checkpoint, engine
):
    stream = stream_of(users=4, events=30)
    _, updates = run(replay_engine(engine), stream, 16)
    rank_of = {u.events[0].event_id: u.events[0].rank for u in updates}
    for n, (event, _, _) in enumerate(stream):
        rank = rank_of[event.event_id]
        history = [e for e, _, _ in stream[:n] if e.user_id == event.user_id]
        if not history:
            assert rank is None  # no recommendations before a user's first event
            continue
        interest = offline(checkpoint, engine, history).interest
        scores = (interest @ engine.items.reps.T)[0]
        hidden = {engine.items.rows[e.item_id] for e in history[-32:]} - {
            engine.items.rows[event.item_id]
        }
        target = scores[engine.items.rows[event.item_id]]
        alive = engine.items.alive.tolist()
        ahead = [
            r for r in range(len(scores)) if alive[r] and r not in hidden and scores[r] > target
        ]
        assert rank == len(ahead) + 1


def test_coalesced_prequential_updates_rank_every_event_they_cover(engine):
    # `currents replay --coalesce`: one update per user and batch, each covered event ranked
    stream = stream_of(users=5, events=40)
    _, per_event = run(replay_engine(engine), stream, 16)
    coalesced = Engine(engine.checkpoint, engine.items, top_n=5, top_categories=3, prequential=True)
    _, updates = run(coalesced, stream, 16)
    assert len(updates) < len(stream)
    refs = [ref for update in updates for ref in update.events]
    assert sorted(r.event_id for r in refs) == sorted(e.event_id for e, _, _ in stream)
    assert {r.event_id: r.rank for r in refs} == {
        u.events[0].event_id: u.events[0].rank for u in per_event
    }


@pytest.mark.parametrize(
    "per_event, prequential",
    [(False, False), (True, True), (False, True)],
    ids=["live", "replay", "coalesced-replay"],
)
def test_redelivered_events_are_not_applied_twice_but_republished_identically(
    engine, per_event, prequential
):
    engine = Engine(
        engine.checkpoint, engine.items, top_n=5, top_categories=3, per_event=per_event,
        prequential=prequential,
    )  # fmt: skip
    stream = stream_of(users=4, events=20)
    stored, updates = run(engine, stream, 5)
    again, republished = run(engine, stream[10:], 5, stored=dict(stored))
    assert again == stored  # state untouched
    original = {u.update_id: u for u in updates}
    for update in republished:
        assert update.update_id in original
        # the same interests and items, the floats up to their last rounded digit: republished
        # rows are ranked in a matrix product of another shape, whose sums may round otherwise
        first = original[update.update_id].interests
        assert update.interests.keys() == first.keys()
        assert all(abs(update.interests[c] - first[c]) <= 2e-6 for c in first)
        again_recs, first_recs = update.recommendations, original[update.update_id].recommendations
        assert [r.item_id for r in again_recs] == [r.item_id for r in first_recs]
        pairs = zip(again_recs, first_recs, strict=True)
        assert all(abs(a.score - b.score) <= 2e-6 for a, b in pairs)
        assert [r.because for r in again_recs] == [r.because for r in first_recs]

    # After a crash, events applied before it come back in batches with new ones, a user's too.
    crashed, _ = run(engine, stream[:15], 5)
    resumed, after_crash = run(engine, stream[8:], 9, stored=dict(crashed))
    assert {e.user_id for e, _, _ in stream[8:15]} & {e.user_id for e, _, _ in stream[15:17]}
    covered = [ref.event_id for update in after_crash for ref in update.events]
    assert sorted(covered) == sorted(event.event_id for event, _, _ in stream[8:])
    for user, record in stored.items():
        got, expected = UserRecord.from_bytes(resumed[user]), UserRecord.from_bytes(record)
        assert (got.partition, got.offset, got.recent_events) == (
            expected.partition, expected.offset, expected.recent_events,
        )  # fmt: skip
        states = engine.checkpoint.decode_states([got.state, expected.state])
        assert torch.allclose(states.h[0], states.h[1], atol=1e-5)


def with_erasure(stream, user: str, at: int):
    """`stream` with an erasure of `user` inserted at position `at`, offsets renumbered."""
    erasure = UserErasure(op="forget", user_id=user, requested_at=datetime(2024, 2, 1, tzinfo=UTC))
    messages = [m for m, _, _ in stream]
    messages.insert(at, erasure)
    offsets, out = {}, []
    for message in messages:
        partition = int(message.user_id[1:]) % 2
        offsets[partition] = offsets.get(partition, -1) + 1
        out.append((message, partition, offsets[partition]))
    return out


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_an_erasure_forgets_the_user_where_it_stands_in_the_stream(checkpoint, engine, batch_size):
    stream = with_erasure(stream_of(users=4, events=40), "u1", at=25)
    stored, forgotten = {}, []
    updates = []
    for start in range(0, len(stream), batch_size):
        batch = [admit(engine, *item) for item in stream[start : start + batch_size]]
        for outcome in engine.apply(stored, batch):
            stored[outcome.user_id] = outcome.record
            forgotten += [outcome.user_id] * outcome.forgotten
            updates += [InterestUpdate.model_validate_json(u) for u in outcome.updates]
    assert forgotten == ["u1"]
    after = [m for m, _, _ in stream[26:] if m.user_id == "u1"]
    assert after  # u1's later events start from a fresh state: nothing before the erasure
    expected = offline(checkpoint, engine, after)
    record = UserRecord.from_bytes(stored["u1"])
    assert torch.allclose(checkpoint.decode_states([record.state]).h, expected.h, atol=1e-5)
    assert set(record.recent_events) == {m.event_id for m in after}
    last = [u for u in updates if u.user_id == "u1"][-1]
    assert {ref.event_id for ref in last.events} <= {m.event_id for m in after}
    for user in ("u0", "u2", "u3"):  # the others are untouched
        events = [m for m, _, _ in stream if m.user_id == user]
        state = checkpoint.decode_states([UserRecord.from_bytes(stored[user]).state])
        assert torch.allclose(state.h, offline(checkpoint, engine, events).h, atol=1e-5)


def test_an_erasure_alone_leaves_no_record_and_is_idempotent(engine):
    stream = stream_of(users=2, events=10)
    stored, _ = run(engine, stream, 10)
    erasure = with_erasure(stream, "u0", at=len(stream))[-1]
    for _ in range(2):  # redelivered after a crash: the same outcome
        (outcome,) = engine.apply(stored, [admit(engine, *erasure)])
        assert (outcome.user_id, outcome.record, outcome.updates) == ("u0", None, [])
        assert outcome.forgotten and outcome.last.offset == erasure[2]
        stored["u0"] = outcome.record
    with pytest.raises(InvalidMessage, match="not the event's user_id"):
        engine.admit(b"u1", erasure[0].model_dump_json().encode(), 0, 99, 0.0)


def test_duplicate_event_ids_are_dropped(engine):
    stream = stream_of(users=2, events=6)
    event, partition, offset = stream[-1]
    retried = (event, partition, offset + 100)  # a producer retry: same id, later offset
    stored, _ = run(engine, stream, 6)
    again, updates = run(engine, [retried], 1, stored=dict(stored))
    assert again == stored and updates == []
    assert engine.duplicates == 1


def test_unknown_items_and_bad_records_are_rejected_with_a_reason(engine):
    event = stream_of(users=1, events=1)[0][0].model_copy(update={"item_id": "nope"})
    with pytest.raises(InvalidMessage) as caught:
        admit(engine, event, 0, 0)
    assert caught.value.kind is ErrorKind.UNKNOWN_ITEM and "nope" in caught.value.reason
    with pytest.raises(InvalidMessage) as caught:
        engine.admit(b"u0", b"{oops", 0, 1, 0.0)
    assert caught.value.kind is ErrorKind.UNDECODABLE


def test_epoch_millisecond_events_are_applied_like_iso_ones(engine):
    stream = stream_of(users=2, events=6)
    iso_stored, _ = run(engine, stream, 6)
    batch = []
    for event, partition, offset in stream:
        payload = event.model_dump(mode="json")
        payload["timestamp"] = round(event.timestamp.timestamp() * 1000)
        raw = json.dumps(payload).encode()
        batch.append(engine.admit(event.user_id.encode(), raw, partition, offset, 0.0))
    assert [incoming.event for incoming in batch] == [event for event, _, _ in stream]
    stored = {outcome.user_id: outcome.record for outcome in engine.apply({}, batch)}
    assert stored == iso_stored


def test_deleted_items_are_never_recommended_and_new_ones_are(checkpoint, engine):
    stream = stream_of(users=3, events=12)
    _, before = run(engine, stream, 12)
    best = before[0].recommendations[0].item_id
    engine.items.delete(best)
    fresh = item_vectors(1, seed=9)[0]
    engine.items.upsert([ItemVector("brand-new", fresh.vector, bytes(32), ENCODER, "New", ())])
    stored = {}
    for event, partition, offset in stream[:11]:
        if event.item_id == best:
            continue
        for outcome in engine.apply(stored, [admit(engine, event, partition, offset)]):
            stored[outcome.user_id] = outcome.record
            recommended = {
                r.item_id
                for r in InterestUpdate.model_validate_json(outcome.updates[-1]).recommendations
            }
            assert best not in recommended
    engine.top_n = 100  # the whole catalog, ranked
    ranked = [r["item_id"] for r in engine.describe(stored[before[0].user_id])["recommendations"]]
    assert best not in ranked and "brand-new" in ranked


def test_corrupt_stored_state_restarts_only_that_user(engine):
    stream = stream_of(users=2, events=8)
    stored, _ = run(engine, stream, 8)
    user = stream[0][0].user_id
    record = UserRecord.from_bytes(stored[user])
    stored[user] = UserRecord(b"CUST garbage", record.prev_interest).to_bytes()
    event = stream[0][0].model_copy(update={"event_id": "later"})
    outcomes = engine.apply(stored, [admit(engine, event, stream[0][1], 1000)])
    assert engine.state_resets == 1
    assert checkpoint_count(engine, outcomes[0].record) == 1


def checkpoint_count(engine, record: bytes) -> int:
    return int(engine.checkpoint.decode_states([UserRecord.from_bytes(record).state]).count[0])


def expected_because(checkpoint, engine, events: list[BehaviorEvent], item_id: str) -> list[str]:
    """The reasons `because` should give, from the model's own step: the attention the last
    event gave each event of its window (+1 for itself: the residual), times how that event's
    item scores against item_id."""
    model, state, K = checkpoint.model, checkpoint.model.fresh_state(1), checkpoint.config.window
    reps = engine.items.reps
    with torch.inference_mode():
        for event in events:
            state, out = model.step(
                state,
                reps[[engine.items.rows[event.item_id]]],
                torch.tensor([event_type_index(event.event_type.value)]),
                torch.tensor([event.timestamp.timestamp()], dtype=torch.float64),
            )
        window = events[-K:]
        attention = out.attention[0, K - len(window) :].clone()
        attention[-1] += 1.0  # the newest event also reaches the interest by the residual
        target = reps[engine.items.rows[item_id]]
        support = [
            float(a * (reps[engine.items.rows[e.item_id]] @ target))
            for a, e in zip(attention, window, strict=True)
        ]
    order = sorted(range(len(window)), key=lambda k: -support[k])
    return [window[k].event_id for k in order[:3]]


@pytest.mark.parametrize("batch_size", [1, 7])
def test_because_cites_the_users_recent_events_in_order_of_support(checkpoint, engine, batch_size):
    stream = stream_of(users=4, events=40)
    _, updates = run(engine, stream, batch_size)
    K = checkpoint.config.window
    for update in updates:
        history = [e for e, _, _ in stream if e.user_id == update.user_id]
        history = history[: [e.event_id for e in history].index(update.events[-1].event_id) + 1]
        recent = {e.event_id: e for e in history[-K:]}
        for recommendation in update.recommendations:
            cited = [reason.event_id for reason in recommendation.because]
            assert 1 <= len(cited) <= 3 and set(cited) <= set(recent)
            assert cited == expected_because(checkpoint, engine, history, recommendation.item_id)
            for reason in recommendation.because:
                event = recent[reason.event_id]
                assert (reason.item_id, reason.event_type) == (event.item_id, event.event_type)


def test_a_user_with_one_event_is_recommended_because_of_it(engine):
    event, partition, offset = stream_of(users=1, events=1)[0]
    stored, [update] = run(engine, [(event, partition, offset)], 1)
    reason = {"event_id": event.event_id, "item_id": event.item_id, "event_type": event.event_type}
    assert update.recommendations
    assert all(r.because == [Reason(**reason)] for r in update.recommendations)
    described = engine.describe(stored[event.user_id])["recommendations"]
    assert all(r["because"] == [reason] for r in described)


def test_records_without_event_types_still_explain_their_events(engine):
    stream = stream_of(users=1, events=3)
    stored, _ = run(engine, stream[:2], 2)
    user = stream[0][0].user_id
    old = UserRecord.from_bytes(stored[user])
    stored[user] = UserRecord(*dataclasses.astuple(old)[:6]).to_bytes()  # as format 2 read it
    _, [update] = run(engine, stream[2:], 1, stored=stored)
    kinds = {e.event_id: e.event_type for e, _, _ in stream}
    reasons = [reason for r in update.recommendations for reason in r.because]
    assert {reason.event_id for reason in reasons} <= set(kinds)
    for reason in reasons:
        known = reason.event_id == stream[2][0].event_id
        assert reason.event_type == (kinds[reason.event_id] if known else None)


def test_an_engine_without_explanations_leaves_because_out(engine):
    quiet = Engine(engine.checkpoint, engine.items, top_n=5, explain=False)
    _, updates = run(quiet, stream_of(users=2, events=6), 3)
    assert all(r.because is None for u in updates for r in u.recommendations)
