"""Events through the real broker into the user-state table on RocksDB, and back after restarts."""

import json

import pytest
from rocksdict import AccessType, Options, Rdict
from support import behaviour, consume, produce

from model.checkpoint import load_checkpoint
from stream.processes import get_json
from stream.records import UserRecord
from stream.topics import ensure_topics


def rocksdb_records(data_dir) -> dict[bytes, UserRecord]:
    """The user-state table as the RocksDB partition stores hold it (read-only)."""
    records = {}
    databases = sorted(data_dir.glob("**/tables/user-states-*.db"))
    assert databases, f"no RocksDB partition stores under {data_dir}"
    for path in databases:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if not key.startswith(b"__faust"):
                    records[key] = UserRecord.from_bytes(value)
        finally:
            db.close()
    return records


def served(worker, users) -> dict[str, dict]:
    return {user: get_json(worker.url(f"/users/{user}/interests"))[1] for user in users}


def assert_same_views(got: dict[str, dict], expected: dict[str, dict]) -> None:
    """Equal up to float rounding: a restarted worker may order its item matrix differently."""
    assert got.keys() == expected.keys()
    for user, view in expected.items():
        assert got[user]["events_applied"] == view["events_applied"]
        assert [r["item_id"] for r in got[user]["recommendations"]] == [
            r["item_id"] for r in view["recommendations"]
        ]
        for field in ("interests", "interest_shift"):
            assert got[user][field] == pytest.approx(view[field], abs=1e-6)


def test_user_states_live_in_rocksdb_and_are_restored_from_the_changelog(
    settings_factory, start_worker, catalog, checkpoint_path, tmp_path
):
    settings = settings_factory(checkpoint=checkpoint_path, encoder_cache=tmp_path / "vectors")
    ensure_topics(settings)
    produce(
        settings.bootstrap,
        settings.catalog_topic,
        [(item.item_id.encode(), item.model_dump_json().encode()) for item in catalog],
    )
    events = behaviour(catalog, users=12, events=240)
    produce(
        settings.bootstrap,
        settings.events_topic,
        [(e.user_id.encode(), e.model_dump_json().encode()) for e in events],
    )
    users = sorted({e.user_id for e in events})
    counts = {user: sum(e.user_id == user for e in events) for user in users}

    worker = start_worker(settings)
    worker.wait_ready()
    consume(
        settings.bootstrap,
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

    # An empty data dir: the table is rebuilt from its changelog topic alone.
    fresh = settings.model_copy(update={"data_dir": tmp_path / "fresh"})
    worker = start_worker(fresh)
    worker.wait_ready()
    assert_same_views(served(worker, users), before)
    assert worker.stop() == 0, worker.tail()
    assert rocksdb_records(fresh.data_dir) == stored
