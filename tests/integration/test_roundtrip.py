"""Events through the real broker into a Faust table on RocksDB, and back after a restart."""

import json
from collections import Counter

from kafka import KafkaConsumer, KafkaProducer
from rocksdict import AccessType, Options, Rdict

from schemas import DeadLetter, ErrorKind
from stream.demo import sample_events
from stream.processes import get_json, spawn_worker, terminate, wait_for
from stream.topics import ensure_topics

BAD_RECORDS = [
    (b"user-1", b"\x00\xff garbage"),  # not UTF-8 JSON
    (b"user-1", b'{"event_id": "e", "user_id": "user-1"}'),  # schema violation
    (b"someone-else", None),  # replaced below by a valid event under the wrong key
]


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def activity_of(settings, users: dict[str, dict]) -> dict[str, dict] | None:
    """Every user's activity as the worker serves it, once it matches `users`; else None."""
    seen = {}
    for user, expected in users.items():
        status, body = get_json(f"http://127.0.0.1:{settings.web_port}/users/{user}/activity")
        if status != 200 or body["events"] != expected["events"]:
            return None
        seen[user] = body
    return seen


def rocksdb_keys(data_dir) -> set[bytes]:
    keys = set()
    databases = sorted(data_dir.glob("**/tables/user-activity-*.db"))
    assert databases, f"no RocksDB partition stores under {data_dir}"
    for path in databases:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            keys.update(key for key in db.keys() if not key.startswith(b"__faust"))
        finally:
            db.close()
    return keys


def test_events_reach_a_rocksdb_table_which_is_restored_from_its_changelog(
    settings_factory, tmp_path
):
    settings = settings_factory()
    ensure_topics(settings)
    events = sample_events(users=6, events=120)
    wrong_key = events[0].model_copy(update={"event_id": "wrong-key"})
    records = [(e.user_id.encode(), e.model_dump_json().encode()) for e in events]
    records[40:40] = BAD_RECORDS[:2] + [(b"someone-else", wrong_key.model_dump_json().encode())]
    produce(settings.bootstrap, settings.events_topic, records)

    counts = Counter(event.user_id for event in events)
    last = {event.user_id: event.event_id for event in events}
    expected = {user: {"events": n, "last_event_id": last[user]} for user, n in counts.items()}

    worker = spawn_worker(settings, tmp_path / "first.log")
    try:
        served = wait_for(
            lambda: activity_of(settings, expected), 120, what="events applied", process=worker
        )
    finally:
        assert terminate(worker) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert {u: b["last_event_id"] for u, b in served.items()} == last
    assert rocksdb_keys(settings.data_dir) == {user.encode() for user in counts}

    # A new worker on an empty data dir must rebuild the table from the changelog topic alone.
    fresh = settings.model_copy(update={"data_dir": tmp_path / "fresh"})
    worker = spawn_worker(fresh, tmp_path / "second.log")
    try:
        restored = wait_for(
            lambda: activity_of(fresh, expected), 120, what="table restored", process=worker
        )
    finally:
        assert terminate(worker) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert restored == served
    assert rocksdb_keys(fresh.data_dir) == {user.encode() for user in counts}

    consumer = KafkaConsumer(
        settings.dead_letter_topic,
        bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    letters = [DeadLetter.model_validate_json(record.value) for record in consumer]
    consumer.close()
    assert sorted(letter.error_kind for letter in letters) == sorted(
        [ErrorKind.UNDECODABLE, ErrorKind.SCHEMA_VIOLATION, ErrorKind.KEY_MISMATCH]
    )
    assert {letter.payload for letter in letters} >= {BAD_RECORDS[0][1], BAD_RECORDS[1][1]}
    assert all(letter.source_topic == settings.events_topic and letter.reason for letter in letters)
    assert json.loads(letters[0].model_dump_json())["reason"]
