"""Replay positions, progress and reports, without Kafka."""

import math

import pytest

from stream.replay import ReplayError, ReplayPlan, parse_position
from stream.report import overlap, prequential

BEGINNING = {0: 10, 1: 0}
END = {0: 50, 1: 30}


def at_time(ms: int) -> dict[int, int]:
    return {0: 20, 1: 30}  # partition 1 has nothing after the time: its end


def test_positions_by_name_time_and_offsets():
    assert parse_position("earliest", BEGINNING, END, BEGINNING, at_time) == BEGINNING
    assert parse_position("now", BEGINNING, END, END, at_time) == END
    assert parse_position("2024-05-01T00:00:00Z", BEGINNING, END, BEGINNING, at_time) == {
        0: 20, 1: 30,
    }  # fmt: skip
    # partitions left out: the beginning for a start, the end for an end
    assert parse_position("1:7", BEGINNING, END, BEGINNING, at_time) == {0: 10, 1: 7}
    assert parse_position("0:50", BEGINNING, END, END, at_time) == {0: 50, 1: 30}


@pytest.mark.parametrize(
    "text, message",
    [
        ("0:9", "out of range for partition 0"),  # before the log start
        ("1:31", "out of range for partition 1"),  # past the end
        ("7:0", "partition 7 does not exist"),
        ("yesterday", "cannot read position"),
    ],
)
def test_bad_positions_are_clear_errors(text, message):
    with pytest.raises(ReplayError, match=message):
        parse_position(text, BEGINNING, END, BEGINNING, at_time)


def test_progress_counts_processed_events_and_completes_at_the_end():
    plan = ReplayPlan("events", start={0: 10, 1: 0}, until={0: 50, 1: 0})
    assert plan.total == 40 and plan.done() == 0 and not plan.complete()
    plan.processed[0] = 30
    assert plan.done() == 20 and not plan.complete()
    plan.processed[0] = 50
    assert plan.done() == 40 and plan.complete()  # partition 1 was empty from the start
    follow = ReplayPlan("events", start={0: 0}, until=None)
    follow.processed[0] = 10**6
    assert follow.total is None and not follow.complete()


def update(user: str, event: str, when: str, rank: int | None, items=("a",), version="v1"):
    ref = {"event_id": event, "timestamp": when, "rank": rank}
    return {
        "update_id": f"{version}:{user}:{event}", "user_id": user, "model_version": version,
        "events": [ref], "recommendations": [{"item_id": i, "score": 0.0} for i in items],
    }  # fmt: skip


def test_prequential_report_per_window_and_overall():
    updates = [
        update("u", "e1", "2024-01-01T10:00:00+00:00", None),  # first event: no ranking yet
        update("u", "e2", "2024-01-01T11:00:00+00:00", 1),
        update("u", "e3", "2024-01-02T09:00:00+00:00", 3),
        update("u", "e4", "2024-01-02T10:00:00+00:00", 11),  # outside the top 10
    ]
    report = prequential({u["update_id"]: u for u in updates}, "day")
    assert report["events"] == 4 and report["scored"] == 3
    assert report["hr@10"] == pytest.approx(2 / 3)
    assert report["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert [w["start"][:10] for w in report["windows"]] == ["2024-01-01", "2024-01-02"]
    assert [w["hr@10"] for w in report["windows"]] == [1.0, 0.5]


def test_overlap_of_two_versions_after_the_same_events():
    a = [update("u", "e1", "2024-01-01T10:00:00+00:00", None, items=list("abcdefghij"))]
    b = [
        update("u", "e1", "2024-01-01T10:00:00+00:00", None, items=list("abcdeVWXYZ"), version="v2")
    ]
    only_b = update("u", "e9", "2024-01-01T10:00:00+00:00", None, version="v2")
    result = overlap({u["update_id"]: u for u in a}, {u["update_id"]: u for u in b + [only_b]})
    assert result == {"events": 1, "overlap@10": 0.5}
