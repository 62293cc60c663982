"""A worker loses nothing: SIGKILLed mid-stream and restarted, it ends with the states of an
uninterrupted run; records its consumer fetched but never delivered are fetched again; workers
joining and leaving the group mid-stream apply every event once, in order."""

import os
from pathlib import Path

import torch
from support import (
    behaviour,
    keyed,
    metric,
    produce,
    produce_paced,
    rocksdb_records,
    wait_until_applied,
)

from model.checkpoint import load_checkpoint
from stream.local_kafka import free_port
from stream.processes import wait_for
from stream.records import RECENT


def test_sigkill_mid_stream_then_restart_equals_an_uninterrupted_run(
    engine_settings, start_worker, catalog, checkpoint_path, tmp_path
):
    base = engine_settings.model_copy(update={"batch_size": 32})
    events = behaviour(catalog, users=40, events=3000)
    records = keyed(events, "user_id")
    users = sorted({e.user_id for e in events})
    counts = {user: sum(e.user_id == user for e in events) for user in users}
    produce(base.cluster, base.events_topic, records[:1500])

    crashing = base.model_copy(
        update={"app_id": f"{base.app_id}-crash", "data_dir": tmp_path / "a"}
    )
    worker = start_worker(crashing)
    worker.wait_ready()
    wait_for(lambda: metric(worker, "currents_events_total") >= 1500, 120, what="first half")
    second_half = produce_paced(base.cluster, base.events_topic, records[1500:], 400)
    wait_for(lambda: metric(worker, "currents_events_total") >= 1800, 60, 0.05, "mid-stream")
    worker.kill()  # SIGKILL: no commit, no flush, no goodbye
    second_half.join()
    killed_at = rocksdb_records(crashing.data_dir)
    assert sum(len(r.recent_events) > 0 for r in killed_at.values()) > 0
    applied_at_kill = sum(
        int(load_checkpoint(checkpoint_path).decode_states([r.state]).count[0])
        for r in killed_at.values()
    )
    assert 1500 <= applied_at_kill < 3000, "the kill must land in the middle of the stream"

    worker = start_worker(crashing)
    worker.wait_ready()
    wait_until_applied(worker, counts, 120, "crashed run caught up")
    assert worker.stop() == 0, worker.tail()

    reference = base.model_copy(update={"app_id": f"{base.app_id}-ref", "data_dir": tmp_path / "b"})
    worker = start_worker(reference)
    worker.wait_ready()
    wait_until_applied(worker, counts, 120, "reference run")
    assert worker.stop() == 0, worker.tail()

    crashed, uninterrupted = rocksdb_records(crashing.data_dir), rocksdb_records(reference.data_dir)
    assert crashed.keys() == uninterrupted.keys() == {user.encode() for user in users}
    checkpoint = load_checkpoint(checkpoint_path)
    for user, expected in uninterrupted.items():
        got = crashed[user]
        assert (got.partition, got.offset) == (expected.partition, expected.offset)
        assert got.recent_events == expected.recent_events
        a, b = checkpoint.decode_states([got.state]), checkpoint.decode_states([expected.state])
        assert int(a.count[0]) == int(b.count[0]) == counts[user.decode()]
        for field in ("h", "c", "ring", "interest"):
            assert torch.allclose(getattr(a, field), getattr(b, field), atol=1e-5), field


def test_records_fetched_but_never_delivered_are_fetched_again(
    engine_settings, start_worker, catalog, monkeypatch
):
    events = behaviour(catalog, users=20, events=400, seed=11)
    records = keyed(events, "user_id")
    users = sorted({e.user_id for e in events})
    counts = {user: sum(e.user_id == user for e in events) for user in users}
    produce(engine_settings.cluster, engine_settings.events_topic, records)
    faults = str(Path(__file__).parent / "faults")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [faults, os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("CURRENTS_TEST_LOSE_FETCHED_FROM", "60")  # about 100 records a partition

    worker = start_worker(engine_settings)
    worker.wait_ready()
    wait_until_applied(worker, counts, 60, "every event applied")
    assert "were fetched but never delivered; fetching them again" in worker.log.read_text()
    assert worker.stop() == 0, worker.tail()


def test_workers_joining_and_leaving_mid_stream_apply_every_event_once_in_order(
    engine_settings, start_worker, catalog
):
    # Scale-out is Kafka's: the second worker takes half the partitions (restoring their states
    # from the changelogs), then the first leaves and the second takes the rest.
    first = engine_settings.model_copy(update={"batch_size": 32})
    second = first.model_copy(
        update={"web_port": free_port(), "data_dir": first.data_dir.parent / "second"}
    )
    # Users 30-39 go quiet after the first third: the states the first worker wrote for them
    # before the second joined reach the second through the changelog alone (a promoted Faust
    # standby replica had lost them).
    quiet = {f"user-{n}" for n in range(30, 40)}
    events = [
        event
        for n, event in enumerate(behaviour(catalog, users=40, events=3000, seed=17))
        if n < 1000 or event.user_id not in quiet
    ]
    records = keyed(events, "user_id")
    users = sorted({e.user_id for e in events})
    produce(first.cluster, first.events_topic, records[:1000])
    original = start_worker(first)
    original.wait_ready()
    wait_for(lambda: metric(original, "currents_events_total") >= 1000, 120, what="first third")
    rest = produce_paced(first.cluster, first.events_topic, records[1000:], 100)
    joiner = start_worker(second, "second")
    joiner.wait_ready()
    wait_for(lambda: metric(joiner, "currents_events_total") > 0, 60, what="second worker at work")
    still_streaming = rest.is_alive()
    assert original.stop() == 0, original.tail()
    rest.join()
    counts = {user: sum(e.user_id == user for e in events) for user in users}
    wait_until_applied(joiner, counts, 120, "every event applied")
    assert still_streaming, "the first worker must leave in the middle of the stream"
    assert joiner.stop() == 0, joiner.tail()
    states = rocksdb_records(second.data_dir)
    assert states.keys() == {user.encode() for user in users}
    for user, record in states.items():
        applied = [e.event_id for e in events if e.user_id == user.decode()]
        assert record.recent_events == tuple(applied[-RECENT:])  # each once, in order
