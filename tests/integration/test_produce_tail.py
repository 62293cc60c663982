"""`currents produce` and `currents tail` against the real broker, called in-process."""

import argparse
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from kafka import TopicPartition

from schemas import (
    EventRef,
    EventType,
    InterestUpdate,
    ItemUpsert,
    Reason,
    Recommendation,
    decode_catalog,
)
from stream import produce, tail
from stream.demo_data import demo_catalog, demo_events
from stream.topics import ensure_topics

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


def parse(command, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture()
def settings(settings_factory, monkeypatch):
    """Unique topics, handed to the commands the way the CLI does: through the environment."""
    settings = settings_factory()
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    return settings


def read_topic(cluster, topic: str, timeout: float = 20) -> list:
    """Every record of `topic`: as many as its end offsets say, so extras cannot hide."""
    consumer = cluster.consumer(group_id=None)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    total = sum(consumer.end_offsets(partitions).values())
    records, deadline = [], time.monotonic() + timeout
    while len(records) < total and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    assert len(records) == total, f"read {len(records)} of {total} records of {topic}"
    return records


def test_produce_sends_the_valid_rows_keyed_and_reports_the_bad(settings, tmp_path, capsys):
    events = demo_events(demo_catalog(), users=3, events_per_user=4)
    rows = [event.model_dump_json() for event in events]
    rows[4:4] = ["{broken", '{"event_id": "x", "user_id": "user-0"}']
    events_path, catalog_path = tmp_path / "events.jsonl", tmp_path / "catalog.jsonl"
    events_path.write_text("\n".join(rows) + "\n")
    items = [ItemUpsert(item_id=f"item-{n}", title=f"Item {n}") for n in range(3)]
    catalog_rows = [item.model_dump_json() for item in items] + ['{"op": "rename"}']
    catalog_path.write_text("\n".join(catalog_rows) + "\n")

    argv = ["--events", str(events_path), "--catalog", str(catalog_path)]
    assert produce.run(parse(produce, argv)) == 0

    out, err = capsys.readouterr()
    assert f"sent 12 events to {settings.events_topic}" in out and "skipped 3 bad rows" in out
    assert f"sent 3 items to {settings.catalog_topic}" in out
    assert "skipping 3 bad rows" in err
    assert f"{events_path}:5: not UTF-8 JSON" in err
    assert f"{events_path}:6: invalid BehaviorEvent" in err
    assert f"{catalog_path}:4: invalid catalog message" in err

    records = read_topic(settings.cluster, settings.events_topic)
    assert sorted((r.key, r.value) for r in records) == sorted(
        (e.user_id.encode(), e.model_dump_json().encode()) for e in events
    )
    by_key = {
        r.key: decode_catalog(r.value) for r in read_topic(settings.cluster, settings.catalog_topic)
    }
    assert by_key == {item.item_id.encode(): item for item in items}


def test_produce_paces_the_demo_world_after_its_catalog(settings, capsys):
    started = time.monotonic()
    argv = ["--dataset", "demo", "--catalog", "--limit", "40", "--rate", "200"]
    assert produce.run(parse(produce, argv)) == 0
    assert time.monotonic() - started >= 39 / 200  # the 40th event is due 0.195 s in

    assert len(read_topic(settings.cluster, settings.catalog_topic)) == 240
    records = read_topic(settings.cluster, settings.events_topic)
    assert len(records) == 40
    assert all(r.key == json.loads(r.value)["user_id"].encode() for r in records)


def interest_update(user: str, interests: dict[str, float], items: list[str]) -> InterestUpdate:
    ref = EventRef(
        event_id=f"{user}:0001", event_type=EventType.CLICK, timestamp=T0, partition=0, offset=1
    )
    return InterestUpdate(
        update_id=f"{user}:1",
        user_id=user,
        model_version="test-1",
        events=[ref],
        interests=interests,
        interest_shift={name: 0.1 for name in interests},
        recommendations=[Recommendation(item_id=item, score=1.0) for item in items],
        latency_ms=12.0,
    )


@pytest.fixture()
def published(settings):
    """Garbage, then updates of two users, all in partition 0 so their order is known."""
    ensure_topics(settings)
    updates = [
        interest_update("user-a", {"Jazz": 0.7, "Space": 0.3}, ["jazz-01"]),
        interest_update("user-b", {"Chess": 0.9}, ["chess-02", "chess-03"]),
    ]
    producer = settings.cluster.producer(acks="all")
    producer.send(settings.updates_topic, key=b"user-a", value=b"\xff garbage", partition=0)
    for update in updates:
        value = update.model_dump_json().encode()
        producer.send(settings.updates_topic, key=update.user_id.encode(), value=value, partition=0)
    producer.flush()
    producer.close()
    return updates


def test_tail_prints_updates_and_warns_about_garbage(published, settings, tmp_path, capsys):
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text(ItemUpsert(item_id="jazz-01", title="Night Trane").model_dump_json() + "\n")
    argv = ["--from-beginning", "--limit", "2", "--timeout", "20", "--catalog", str(catalog)]
    assert tail.run(parse(tail, argv)) == 0

    out, err = capsys.readouterr()
    assert (
        out
        == "\n".join(tail.format_update(u, {"jazz-01": "Night Trane"}) for u in published) + "\n"
    )
    assert "jazz-01 (Night Trane)" in out
    assert err.startswith(f"warning: skipped {settings.updates_topic}[0]@0, not an InterestUpdate")
    assert err.count("\n") == 1


def test_tail_follows_one_user_as_json(published, settings, capsys):
    argv = ["--from-beginning", "--user", "user-b", "--json", "--limit", "1", "--timeout", "20"]
    assert tail.run(parse(tail, argv)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [InterestUpdate.model_validate_json(line) for line in lines] == [published[1]]


def test_tail_without_from_beginning_shows_only_new_updates(published, settings, capsys):
    fresh = interest_update("user-new", {"Space": 1.0}, [])
    codes = []
    watcher = threading.Thread(
        target=lambda: codes.append(tail.run(parse(tail, ["--limit", "1", "--timeout", "20"])))
    )
    watcher.start()
    producer = settings.cluster.producer(acks="all")
    while watcher.is_alive():  # again and again: tail finds the end of the topic when it starts
        producer.send(
            settings.updates_topic, key=b"user-new", value=fresh.model_dump_json().encode()
        )
        producer.flush()
        watcher.join(0.5)
    producer.close()
    assert codes == [0]
    assert capsys.readouterr().out == tail.format_update(fresh) + "\n"


# --- formatting, without Kafka --------------------------------------------------------------


def test_update_shows_bars_shift_and_titles_best_first():
    update = interest_update("user-7", {"Jazz": 0.42, "Space": 0.58}, ["space-01", "jazz-02"])
    update = update.model_copy(update={"interest_shift": {"Jazz": -0.2}})
    lines = tail.format_update(update, {"space-01": "Deep Nebula"}).splitlines()
    assert lines[0] == (
        "user-7  2024-05-06 09:00:00Z  model test-1  "
        "1 event (1 click), last user-7:0001  latency 12 ms"
    )
    assert lines[1:] == [
        "  Space  ██████░░░░ 0.58 (+0.00)",
        "  Jazz   ████░░░░░░ 0.42 (-0.20)",
        "  recommended:",
        "    space-01 (Deep Nebula)",
        "    jazz-02",
    ]


def test_each_recommendation_says_which_events_it_is_because_of():
    update = interest_update("user-7", {"Space": 1.0}, [])
    reasons = [
        Reason(event_id="e1", item_id="space-02", event_type=EventType.VIEW),
        Reason(event_id="e2", item_id="space-03", event_type=EventType.CLICK),
        Reason(event_id="e0", item_id="space-04"),  # applied before event types were kept
    ]
    recommendation = Recommendation(item_id="space-01", score=1.0, because=reasons)
    update = update.model_copy(update={"recommendations": [recommendation]})
    titles = {"space-01": "Deep Nebula", "space-02": "Lunar Orbit", "space-03": "Star Map"}
    assert tail.format_update(update, titles).splitlines()[-2:] == [
        "    space-01 (Deep Nebula)",
        "      because you viewed Lunar Orbit, clicked Star Map, saw space-04",
    ]


def test_update_keeps_only_the_top_entries_and_clamps_bars():
    many = {f"c{n}": n / 10 for n in range(12)}
    update = interest_update("u", many, [f"i{n}" for n in range(9)])
    events = [
        EventRef(
            event_id=f"e{n}",
            event_type=list(EventType)[n % 2],
            timestamp=T0 + timedelta(minutes=n),
            partition=0,
            offset=n,
        )
        for n in range(3)
    ]
    update = update.model_copy(update={"events": events})
    lines = tail.format_update(update, top=2).splitlines()
    assert "3 events (2 click, 1 view), last e2" in lines[0] and "2024-05-06 09:02:00Z" in lines[0]
    assert lines[1:] == [
        "  c11  ██████████ 1.10 (+0.10)",
        "  c10  ██████████ 1.00 (+0.10)",
        "  recommended:",
        "    i0",
        "    i1",
    ]
    empty = update.model_copy(update={"interests": {}, "recommendations": []})
    assert tail.format_update(empty).splitlines()[1:] == [
        "  interests: none yet",
        "  recommended: nothing",
    ]
