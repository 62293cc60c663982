"""The engine end to end on the real broker: coverage, parity with the offline model, bad input."""

import json
import os
from collections import Counter

import pytest
import torch
from support import behaviour, consume, keyed, produce, samples

from model.checkpoint import load_checkpoint
from model.config import event_type_index
from model.encoder import ItemEncoder, item_text
from model.interest import StepOutput, category_shift, top_n
from schemas import DeadLetter, ErrorKind, InterestUpdate
from stream.processes import get_json, wait_for
from stream.records import RECENT


def bad_records(events):
    valid = events[0]
    return {
        b"\xde\xad\xbe\xef" + os.urandom(32): ErrorKind.UNDECODABLE,
        b'{"event_id": "x", "user_id": ': ErrorKind.UNDECODABLE,
        valid.model_dump_json().replace('"click"', '"like"').replace('"view"', '"like"').encode(): (
            ErrorKind.SCHEMA_VIOLATION
        ),
        json.dumps(
            {"event_id": "e", "user_id": valid.user_id}
        ).encode(): ErrorKind.SCHEMA_VIOLATION,
        b'{"pad": "' + b"x" * 200_000 + b'"}': ErrorKind.OVERSIZE,
        valid.model_copy(update={"event_id": "ghost", "item_id": "no-such-item"})
        .model_dump_json()
        .encode(): ErrorKind.UNKNOWN_ITEM,
    }


def offline_updates(checkpoint_path, catalog, cache, events, updates, top_n_items=10):
    """Recompute every published update with the model's own `step`, one event at a time."""
    ckpt = load_checkpoint(checkpoint_path)
    ids = [item.item_id for item in catalog]
    texts = [item_text(i.item_id, i.title, i.description, i.categories) for i in catalog]
    vectors = torch.from_numpy(ItemEncoder(ckpt.encoder_name, cache).encode(texts))
    categories = sorted({c for item in catalog for c in item.categories})
    membership = torch.tensor([[float(c in i.categories) for c in categories] for i in catalog])
    ends = {update.events[-1].event_id: update for update in updates}
    checked = 0
    with torch.inference_mode():
        reps = ckpt.model.item_representations(vectors, ckpt.warm_indices(ids))
        for user in sorted({e.user_id for e in events}):
            state, prev, seen = ckpt.model.fresh_state(1), torch.zeros(1, reps.shape[1]), []
            for event in (e for e in events if e.user_id == user):
                state, _ = ckpt.model.step(
                    state,
                    reps[[ids.index(event.item_id)]],
                    torch.tensor([event_type_index(event.event_type.value)]),
                    torch.tensor([event.timestamp.timestamp()], dtype=torch.float64),
                )
                seen = (seen + [event.item_id])[-RECENT:]
                if event.event_id not in ends:
                    continue
                update = ends[event.event_id]
                exclude = torch.tensor([[i in seen for i in ids]])
                scores, index = top_n(state.interest, reps, top_n_items, exclude)
                assert [r.item_id for r in update.recommendations] == [
                    ids[i] for i in index[0].tolist()
                ]
                assert [r.score for r in update.recommendations] == pytest.approx(
                    scores[0].tolist(), abs=1e-4
                )
                dist, shift = category_shift(StepOutput(state.interest, prev), reps, membership)
                for name, weight in update.interests.items():
                    assert weight == pytest.approx(dist[0, categories.index(name)].item(), abs=1e-4)
                for name, change in update.interest_shift.items():
                    assert change == pytest.approx(
                        shift[0, categories.index(name)].item(), abs=1e-4
                    )
                prev = state.interest.clone()
                checked += 1
    return checked


def test_valid_events_are_covered_once_match_the_offline_model_and_bad_ones_dead_letter(
    engine_settings, start_worker, catalog, checkpoint_path, tmp_path
):
    settings = engine_settings
    events = behaviour(catalog, users=100, events=3000)
    bad = bad_records(events)
    records = keyed(events, "user_id")
    for n, payload in enumerate(bad):
        records.insert(300 * (n + 1), (events[0].user_id.encode(), payload))
    records.insert(1000, (b"someone-else", events[5].model_dump_json().encode()))
    worker = start_worker(settings)
    worker.wait_ready()
    produce(settings.cluster, settings.events_topic, records)

    expected = {e.event_id for e in events}
    updates = [
        InterestUpdate.model_validate_json(record.value)
        for record in consume(
            settings.cluster,
            settings.updates_topic,
            lambda got: sum(len(json.loads(r.value)["events"]) for r in got) >= len(expected),
        )
    ]
    covered = Counter(ref.event_id for update in updates for ref in update.events)
    assert set(covered) == expected and set(covered.values()) == {1}
    assert len({u.update_id for u in updates}) == len(updates)
    assert all(u.model_version == load_checkpoint(checkpoint_path).version for u in updates)
    for update in updates:
        offsets = [ref.offset for ref in update.events]
        assert offsets == sorted(offsets) and len({ref.partition for ref in update.events}) == 1

    letters = [
        DeadLetter.model_validate_json(r.value)
        for r in consume(settings.cluster, settings.dead_letter_topic, lambda got: len(got) >= 7)
    ]
    assert sorted((letter.payload, letter.error_kind) for letter in letters) == sorted(
        [*bad.items(), (events[5].model_dump_json().encode(), ErrorKind.KEY_MISMATCH)]
    )
    assert all(letter.reason and letter.source_topic == settings.events_topic for letter in letters)
    assert worker.alive(), worker.tail()
    status, health = get_json(worker.url("/health"))
    assert status == 200 and health["items"] == len(catalog)
    rejected = [*bad.values(), ErrorKind.KEY_MISMATCH]
    assert_metrics(worker, settings, len(events), len(updates), rejected)

    assert offline_updates(checkpoint_path, catalog, tmp_path / "vectors", events, updates) == len(
        updates
    )
    status, served = get_json(worker.url(f"/users/{events[0].user_id}/interests"))
    last = [u for u in updates if u.user_id == events[0].user_id][-1]
    assert status == 200
    assert [r["item_id"] for r in served["recommendations"]] == [
        r.item_id for r in last.recommendations
    ]
    assert worker.stop() == 0, worker.tail()

    # A restarted worker with nothing left to process reports no lag: it reads where each
    # partition stands from its progress table before any event arrives.
    worker = start_worker(settings)
    worker.wait_ready()
    everyone = {(("partition", str(p)),) for p in range(settings.partitions)}
    lag = wait_for(
        lambda: (got := samples(worker, "currents_consumer_lag")).keys() == everyone and got,
        60, what="the lag of every events partition",
    )  # fmt: skip
    assert set(lag.values()) == {0.0}
    assert worker.stop() == 0, worker.tail()


def assert_metrics(worker, settings, events: int, updates: int, rejected: list[ErrorKind]):
    """What /metrics says once a stream is processed: it counts what the topics hold."""

    def one(name: str) -> float:
        return samples(worker, name)[()]

    assert one("currents_events_total") == events
    assert one("currents_updates_total") == one("currents_update_latency_seconds_count") == updates
    assert 1 <= one("currents_step_seconds_count") <= one("currents_batch_events_count")
    assert samples(worker, "currents_dead_letters_total") == {
        (("kind", kind.value),): count for kind, count in Counter(rejected).items()
    }
    partitions = {(("partition", str(p)),): 0.0 for p in range(settings.partitions)}
    assert samples(worker, "currents_consumer_lag") == partitions
