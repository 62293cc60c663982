"""`currents replay` beside a live worker, on the real broker: same outputs as live, twice the
same, resumable, and leaves the live state and outputs alone."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from kafka import TopicPartition
from support import behaviour, keyed, metric, produce, rocksdb_records, served

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.interest import InterestModel
from stream.processes import wait_for
from stream.report import prequential, read_updates

EVENTS = 900


def replay_command(settings, *args: str, tmp_path) -> list[str]:
    return [sys.executable, "-m", "stream", "replay", "--checkpoint", str(settings.checkpoint),
            "--batch-size", "64", *args]  # fmt: skip


def run_replay(settings, *args: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        replay_command(settings, *args, tmp_path=tmp_path), cwd=tmp_path, env=env_of(settings),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def env_of(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP"}
    return {**env, **settings.to_env(), "PYTHONUNBUFFERED": "1"}


def topic_names(cluster) -> set[str]:
    consumer = cluster.consumer(group_id=None)
    try:
        return set(consumer.topics())
    finally:
        consumer.close()


def topic_snapshot(cluster, prefix: str | tuple[str, ...]) -> dict[str, list]:
    """Every record of every topic whose name starts with `prefix`: (partition, offset, key,
    value)."""
    consumer = cluster.consumer(group_id=None)
    try:
        names = sorted(t for t in consumer.topics() if t.startswith(prefix))
        snapshot = {}
        for name in names:
            tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name)]
            consumer.assign(tps)
            consumer.seek_to_beginning()
            end = consumer.end_offsets(tps)
            rows = []
            while any(consumer.position(tp) < end[tp] for tp in tps):
                for records in consumer.poll(timeout_ms=1000).values():
                    rows += [(r.partition, r.offset, r.key, r.value) for r in records]
            snapshot[name] = sorted(rows)
        return snapshot
    finally:
        consumer.close()


def by_event(updates: dict[str, dict]) -> dict[str, dict]:
    return {u["events"][-1]["event_id"]: u for u in updates.values()}


def assert_same_update(got: dict, expected: dict, shift: bool = True) -> None:
    assert [r["item_id"] for r in got["recommendations"]] == [
        r["item_id"] for r in expected["recommendations"]
    ]
    assert [r["score"] for r in got["recommendations"]] == pytest.approx(
        [r["score"] for r in expected["recommendations"]], abs=1e-4
    )
    assert got["interests"] == pytest.approx(expected["interests"], abs=1e-4)
    if shift:
        assert got["interest_shift"] == pytest.approx(expected["interest_shift"], abs=1e-4)


def test_replay_beside_a_live_worker(engine_settings, start_worker, catalog, tmp_path):
    live = engine_settings
    events = behaviour(catalog, users=30, events=EVENTS)
    users = sorted({e.user_id for e in events})
    produce(live.cluster, live.events_topic, keyed(events, "user_id"))
    worker = start_worker(live)
    worker.wait_ready()
    wait_for(lambda: metric(worker, "currents_events_total") >= EVENTS, 120, what="live caught up")

    # Bad input: a clear error (exit 2) before any work, and nothing created.
    before_topics = topic_names(live.cluster)
    other_encoder = tmp_path / "other.pt"
    save_checkpoint(
        other_encoder, InterestModel(ModelConfig(n_items=2, text_dim=384)), {"item-0": 1},
        ["Jazz"], "another/bert",
    )  # fmt: skip
    bad = {
        "does not exist": ["--events", "no-such-topic"],
        "after --until": ["--from", "0:5", "--until", "0:2"],
        "out of range": ["--from", "1:999999"],
        "does not match the catalog": ["--checkpoint", str(other_encoder)],
    }
    for message, args in bad.items():
        result = run_replay(live, "--name", "bad", *args, tmp_path=tmp_path)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert topic_names(live.cluster) == before_topics

    live_topics = (
        live.updates_topic,
        f"{live.app_id}-user-states",
        f"{live.app_id}-events-progress",
    )
    live_before = topic_snapshot(live.cluster, live_topics)  # outputs, state changelogs
    views_before = served(worker, users)

    first = run_replay(live, "--name", "a", "--report", str(tmp_path / "report"),
                       tmp_path=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"Replayed {EVENTS} events" in first.stdout
    second = run_replay(live, "--name", "b", tmp_path=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr

    # A namespace retired by half: its consumer group deleted, its states kept in its changelogs
    # or its local stores. A fresh start there would take them for its own: refused.
    admin = live.cluster.admin()
    try:
        admin.delete_groups([f"{live.app_id}-replay-b"])
    finally:
        admin.close()
    shutil.rmtree(tmp_path / "replay" / "b")
    shutil.copytree(tmp_path / "replay" / "a", tmp_path / "replay" / "a-copy")
    for name, left in [("b", "(topic "), ("a-copy", "(local states in ")]:
        reused = run_replay(live, "--name", name, tmp_path=tmp_path)
        assert reused.returncode == 2 and "Traceback" not in reused.stderr, reused.stderr
        assert f"holds an earlier run's states {left}" in reused.stderr, reused.stderr

    # The live side is untouched: same records in its output topic and changelogs, same views.
    assert topic_snapshot(live.cluster, live_topics) == live_before
    assert len(live_before) == 3
    assert served(worker, users) == views_before

    a = read_updates(live.cluster, "currents.replay.a.updates")
    b = read_updates(live.cluster, "currents.replay.b.updates")
    assert len(a) == EVENTS and sorted(by_event(a)) == sorted(e.event_id for e in events)
    # Twice the same range, same checkpoint: the same outputs.
    assert a.keys() == b.keys()
    for update_id, update in a.items():
        assert update["events"] == b[update_id]["events"]  # ranks included
        assert_same_update(b[update_id], update)
    # ... and the live engine's outputs for the same events.
    replayed = by_event(a)
    live_updates = [json.loads(value) for *_, value in live_before[live.updates_topic]]
    assert live_updates
    for update in live_updates:
        one_event = len(update["events"]) == 1  # live batches move the shift's baseline
        assert_same_update(replayed[update["events"][-1]["event_id"]], update, shift=one_event)

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    result = report["topics"]["currents.replay.a.updates"]
    assert result == prequential(a)
    assert result["scored"] == EVENTS - len(users)  # every event but each user's first
    assert (tmp_path / "report" / "report.png").stat().st_size > 10_000

    # --coalesce: one update per user and batch, as live; the same events, ranks and views.
    coalesced = run_replay(live, "--name", "d", "--coalesce", tmp_path=tmp_path)
    assert coalesced.returncode == 0, coalesced.stdout + coalesced.stderr
    d = read_updates(live.cluster, "currents.replay.d.updates")
    refs = {ref["event_id"]: ref for update in d.values() for ref in update["events"]}
    assert len(d) < EVENTS and len(refs) == sum(len(u["events"]) for u in d.values()) == EVENTS
    assert refs == {event_id: update["events"][0] for event_id, update in replayed.items()}
    for update in d.values():
        assert_same_update(update, replayed[update["events"][-1]["event_id"]], shift=False)

    # Interrupted and resumed: the same states as the uninterrupted run. After Ctrl-C, the same
    # outputs; after a hard kill, the events of the batches in flight may come back in one update
    # per user (their states were stored, their own updates maybe not sent): still covered.
    checkpoint = load_checkpoint(live.checkpoint)
    states_a = rocksdb_records(tmp_path / "replay" / "a")
    for name, stop in [("c", signal.SIGINT), ("e", signal.SIGKILL)]:
        replay = subprocess.Popen(
            replay_command(live, "--name", name, "--batch-size", "8", tmp_path=tmp_path),
            cwd=tmp_path, env=env_of(live), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        topic = f"currents.replay.{name}.updates"
        try:
            wait_for(
                lambda t=topic: len(topic_snapshot(live.cluster, t).get(t, [])) >= EVENTS // 3,
                120, 0.2, "a third of the replay", process=replay,
            )  # fmt: skip
            replay.send_signal(stop)
            output = replay.communicate(timeout=60)[0]
        finally:
            if replay.poll() is None:
                replay.kill()
        if stop == signal.SIGINT:
            assert replay.returncode == 130 and "Interrupted after" in output, output
        else:
            assert replay.returncode == -signal.SIGKILL, output
        resumed = run_replay(live, "--name", name, tmp_path=tmp_path)
        assert resumed.returncode == 0 and "resuming" in resumed.stdout, (
            resumed.stdout + resumed.stderr
        )
        records = topic_snapshot(live.cluster, topic)[topic]
        published = [json.loads(value) for *_, value in records]
        covered = {ref["event_id"] for update in published for ref in update["events"]}
        assert covered == {e.event_id for e in events}
        for update in published:  # re-published ones too: same id, same view
            assert_same_update(update, a[update["update_id"]])
        if stop == signal.SIGINT:
            got = read_updates(live.cluster, topic)
            assert got.keys() == a.keys()
            for update_id, update in got.items():
                assert update["events"][-1] == a[update_id]["events"][-1]  # ranks included
        states = rocksdb_records(tmp_path / "replay" / name)
        assert states.keys() == states_a.keys() == {u.encode() for u in users}
        for user, record in states_a.items():
            assert (states[user].partition, states[user].offset) == (
                record.partition,
                record.offset,
            )
            got_state, expected = (
                checkpoint.decode_states([r.state]) for r in (states[user], record)
            )
            assert int(got_state.count[0]) == int(expected.count[0])
            assert torch.allclose(got_state.h, expected.h, atol=1e-5)
            assert torch.allclose(got_state.ring, expected.ring, atol=1e-5)
