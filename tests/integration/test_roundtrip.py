"""Events through the real broker into the user-state table on RocksDB, and back after restarts."""

import json

from support import assert_same_views, behaviour, consume, keyed, produce, rocksdb_records, served

from model.checkpoint import load_checkpoint


def test_user_states_live_in_rocksdb_and_are_restored_from_the_changelog(
    engine_settings, start_worker, catalog, checkpoint_path, tmp_path
):
    settings = engine_settings
    events = behaviour(catalog, users=12, events=240)
    produce(
        settings.cluster,
        settings.events_topic,
        keyed(events, "user_id"),
    )
    users = sorted({e.user_id for e in events})
    counts = {user: sum(e.user_id == user for e in events) for user in users}

    worker = start_worker(settings)
    worker.wait_ready()
    consume(
        settings.cluster,
        settings.updates_topic,
        lambda got: sum(len(json.loads(r.value)["events"]) for r in got) >= len(events),
    )
    before = served(worker, users)
    assert {user: view["events_applied"] for user, view in before.items()} == counts
    assert worker.stop() == 0, worker.tail()

    stored = rocksdb_records(settings.data_dir)
    assert set(stored) == {user.encode() for user in users}
    checkpoint = load_checkpoint(checkpoint_path)
    for user, record in stored.items():
        assert int(checkpoint.decode_states([record.state]).count[0]) == counts[user.decode()]
        assert (
            record.recent_events[-1]
            == [e for e in events if e.user_id == user.decode()][-1].event_id
        )

    # Same data dir: the local RocksDB stores are reopened.
    worker = start_worker(settings)
    worker.wait_ready()
    assert_same_views(served(worker, users), before)
    assert worker.stop() == 0, worker.tail()

    # An empty data dir: the table is rebuilt from its changelog topic alone, before the
    # worker says it is ready (its first answers are the restored states).
    fresh = settings.model_copy(update={"data_dir": tmp_path / "fresh"})
    worker = start_worker(fresh)
    worker.wait_ready()
    assert_same_views(served(worker, users), before)
    assert worker.stop() == 0, worker.tail()
    assert rocksdb_records(fresh.data_dir) == stored
