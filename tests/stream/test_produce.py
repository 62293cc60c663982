import argparse
import gzip
from datetime import UTC, datetime

import pytest

from model.data import Event, Item
from schemas import BehaviorEvent, EventType, decode_event
from stream.demo_data import demo_catalog, demo_events
from stream.produce import (
    add_arguments,
    dataset_messages,
    paced,
    read_jsonl,
    run,
    to_behavior_event,
    to_item_upsert,
)


class FakeClock:
    """Time that moves only when the code under test sleeps or the test says work was done."""

    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def emission_times(clock: FakeClock, items, rate: float, work: float) -> list[float]:
    """When each item was released, relative to the start, if handling one takes `work` s."""
    times = []
    for _ in paced(items, rate, clock=clock, sleep=clock.sleep):
        times.append(round(clock.now - 100.0, 9))
        clock.now += work
    return times


def test_pacing_follows_a_fixed_schedule_whatever_the_send_cost():
    clock = FakeClock()
    assert emission_times(clock, range(6), rate=10, work=0.03) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert all(s == pytest.approx(0.07) for s in clock.sleeps)  # 0.1 s slot less the send


def test_pacing_catches_up_when_sending_is_slower_than_the_rate():
    clock = FakeClock()
    times = emission_times(clock, range(4), rate=10, work=0.25)
    assert times == [0.0, 0.25, 0.5, 0.75] and clock.sleeps == []
    # once sending is fast again, the late items go at once until the schedule is met
    clock = FakeClock()
    items = iter(paced(range(10), 10, clock=clock, sleep=clock.sleep))
    next(items)
    clock.now += 0.55  # a stall of five and a half slots
    assert [next(items) for _ in range(5)] == [1, 2, 3, 4, 5] and clock.sleeps == []
    next(items)
    assert clock.sleeps == [pytest.approx(0.05)]


def test_rate_zero_never_waits():
    clock = FakeClock()
    assert list(paced(range(1000), 0, clock=clock, sleep=clock.sleep)) == list(range(1000))
    assert clock.sleeps == []


def test_read_jsonl_skips_and_locates_bad_rows(tmp_path):
    good = demo_events(demo_catalog(), users=2, events_per_user=2)[:3]
    rows = [e.model_dump_json().encode() for e in good]
    rows[1:1] = [b"{not json", b"", b'{"event_id": "e1"}', b"\xff\xfe not utf-8"]
    path = tmp_path / "events.jsonl.gz"  # gzip is detected by content
    path.write_bytes(gzip.compress(b"\n".join(rows) + b"\n"))

    events, rejected = read_jsonl(path, decode_event)
    assert events == good
    assert [r.where for r in rejected] == [f"{path}:2", f"{path}:4", f"{path}:5"]
    assert "user_id" in rejected[1].reason and "not UTF-8 JSON" in rejected[2].reason


def test_dataset_rows_become_wire_messages():
    event = Event("u1:i9:1700000000", "u1", "i9", "click", 1_700_000_000.5, dwell_ms=1200)
    assert to_behavior_event(event) == BehaviorEvent(
        event_id="u1:i9:1700000000",
        user_id="u1",
        item_id="i9",
        event_type=EventType.CLICK,
        timestamp=datetime(2023, 11, 14, 22, 13, 20, 500000, tzinfo=UTC),
        dwell_ms=1200,
    )
    upsert = to_item_upsert(Item("i9", "Heat (1995)", "", ("Action", "Crime")))
    assert (upsert.title, upsert.categories) == ("Heat (1995)", ["Action", "Crime"])


def write_movielens(folder, ratings: list[str]) -> None:
    folder.mkdir()
    (folder / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n")
    (folder / "u.item").write_text(
        "1|Heat (1995)|01-Jan-1995||http://x|0|1|0\n"
        "2|Clerks (1994)|01-Jan-1994||http://x|0|0|1\n"
        f"3|{'Long' * 200}|01-Jan-1994||http://x|0|0|1\n"  # title over 512 characters
    )
    (folder / "u.data").write_text("".join(f"{row}\n" for row in ratings))


def test_movielens_is_converted_time_ordered_and_invalid_rows_are_rejected(tmp_path):
    ratings = ["7\t1\t5\t890000300", "7\t2\t2\t890000100", "9\t1\t3\t890000200", "9\t2\t4\t12"]
    write_movielens(tmp_path / "ml", ratings)
    events, catalog, rejected = dataset_messages("movielens", [tmp_path / "ml"])

    assert [(e.user_id, e.item_id, e.event_type) for e in events] == [
        ("7", "2", EventType.VIEW),
        ("9", "1", EventType.VIEW),
        ("7", "1", EventType.CLICK),
    ]
    assert [(i.item_id, i.categories) for i in catalog] == [("1", ["Action"]), ("2", ["Comedy"])]
    assert [r.where for r in rejected] == ["event 9:2:12", "item 3"]  # 1970; too long a title
    assert "timestamp" in rejected[0].reason and "title" in rejected[1].reason


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--events", "a", "--dataset", "demo"],
        ["--dataset", "x"],
        ["--events", "a", "--rate", "-1"],
        ["--events", "a", "--limit", "-2"],
    ],
)
def test_arguments_refuse_missing_conflicting_or_negative_values(argv):
    with pytest.raises(SystemExit):
        parse(argv)


def test_unusable_input_is_a_clear_error_before_any_kafka_call(tmp_path, capsys):
    assert run(parse(["--dataset", "mind"])) == 2
    assert "--dataset mind needs --path" in capsys.readouterr().err
    assert run(parse(["--events", str(tmp_path / "x.jsonl"), "--catalog"])) == 2
    assert "--catalog needs a PATH" in capsys.readouterr().err
    assert run(parse(["--dataset", "movielens", "--path", str(tmp_path)])) == 2
    assert "cannot read the input" in capsys.readouterr().err
