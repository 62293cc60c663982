"""`currents forget`: a user's state erased everywhere Currents keeps it, and a fresh start."""

import os
import subprocess
import sys

from kafka import TopicPartition
from support import behaviour, consume, keyed, metric, produce, rocksdb_records, served

from model.checkpoint import load_checkpoint
from stream.processes import get_json, wait_for
from stream.topics import changelog_topic, state_tables


def currents(settings, *args: str, cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CURRENTS_", "KAFKA_B"))}
    env.update({k: v for k, v in settings.to_env().items() if v}, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "stream", *args], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def last_records(cluster, topic: str) -> dict[bytes, bytes | None]:
    """The last value of every key in `topic` (None: a tombstone)."""
    consumer = cluster.consumer(group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        end, last = consumer.end_offsets(tps), {}
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=1000).values():
                last.update((r.key, r.value) for r in records)
        return last
    finally:
        consumer.close()


def test_forget_erases_the_state_everywhere_and_the_next_event_starts_fresh(
    engine_settings, start_worker, catalog, checkpoint_path, tmp_path
):
    settings = engine_settings
    events = behaviour(catalog, users=6, events=120)
    users = sorted({e.user_id for e in events})
    forgotten, kept = users[0], users[1:]
    produce(settings.cluster, settings.events_topic, keyed(events, "user_id"))
    worker = start_worker(settings)
    worker.wait_ready()
    wait_for(lambda: metric(worker, "currents_events_total") >= len(events), 120, what="applied")
    assert get_json(worker.url(f"/users/{forgotten}/interests"))[0] == 200

    done = currents(settings, "forget", forgotten, cwd=tmp_path)
    assert done.returncode == 0 and "sent the erasure of 1 user" in done.stdout, done.stderr
    wait_for(lambda: get_json(worker.url(f"/users/{forgotten}/interests"))[0] == 404, 60,
             what="404 after forget")  # fmt: skip
    assert all(view is not None for view in served(worker, kept).values())
    assert metric(worker, "currents_erasures_total") == 1
    tombstone = consume(
        settings.cluster, settings.updates_topic,
        lambda got: any(r.key == forgotten.encode() and r.value is None for r in got),
    )  # fmt: skip
    assert [r.value for r in tombstone if r.key == forgotten.encode()][-1] is None
    assert worker.stop() == 0, worker.tail()

    stored = rocksdb_records(settings.data_dir)
    assert forgotten.encode() not in stored and set(stored) == {u.encode() for u in kept}
    version = load_checkpoint(checkpoint_path).version
    changelog = changelog_topic(settings.app_id, state_tables(version)[0])
    latest = last_records(settings.cluster, changelog)
    assert latest[forgotten.encode()] is None and all(latest[u.encode()] for u in kept)

    # a replay over a range holding the erasure ends without the user's state
    replay = currents(settings, "replay", "--checkpoint", str(checkpoint_path), "--name", "f",
                      cwd=tmp_path)  # fmt: skip
    assert replay.returncode == 0, replay.stdout + replay.stderr
    replayed = rocksdb_records(tmp_path / "replay" / "f")
    assert forgotten.encode() not in replayed and set(replayed) == {u.encode() for u in kept}

    # restored from the changelog alone: nothing for the user
    fresh = settings.model_copy(update={"data_dir": tmp_path / "fresh"})
    worker = start_worker(fresh)
    worker.wait_ready()
    assert get_json(worker.url(f"/users/{forgotten}/interests"))[0] == 404
    assert all(view is not None for view in served(worker, kept).values())

    # the user's next event starts from a fresh state
    again = behaviour(catalog, users=1, events=1, seed=9)[0]
    again = again.model_copy(update={"user_id": forgotten, "event_id": "after-forget"})
    produce(settings.cluster, settings.events_topic, keyed([again], "user_id"))
    wait_for(lambda: (get_json(worker.url(f"/users/{forgotten}/interests"))[1] or {}).get(
        "events_applied") == 1, 60, what="a fresh state")  # fmt: skip
    assert worker.stop() == 0, worker.tail()
    record = rocksdb_records(fresh.data_dir)[forgotten.encode()]
    assert record.recent_events == ("after-forget",)
