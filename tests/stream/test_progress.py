import asyncio
from concurrent.futures import Future

import pytest

from stream.progress import LostTails, Progress, holes, span


def test_contiguous_offsets_leave_no_hole():
    assert holes(10, [10, 11, 12]) == ([], 13)


def test_a_batch_that_starts_late_is_preceded_by_the_missing_range():
    assert holes(10, [42, 43]) == ([(10, 42)], 44)


def test_holes_inside_a_batch_are_found_too():
    assert holes(0, [0, 1, 5, 6, 9]) == ([(2, 5), (7, 9)], 10)


def test_redelivered_offsets_are_not_holes_and_never_move_progress_back():
    assert holes(50, [40, 41, 50, 51]) == ([], 52)
    assert holes(50, [40, 41]) == ([], 50)


def test_a_partition_fetched_past_what_the_agent_expects_is_lost_after_the_patience():
    tails = LostTails(patience=3)
    assert [tails.check(0, 340, 673) for _ in range(3)] == [False, False, True]


def test_a_partition_whose_agent_moves_on_is_not_lost():
    tails = LostTails(patience=3)
    assert not any(tails.check(0, expected, 673) for expected in (340, 372, 404, 436))


def test_a_partition_the_agent_has_caught_up_with_is_not_lost():
    tails = LostTails(patience=2)
    assert not any(tails.check(0, 673, 673) for _ in range(5))


def test_a_stuck_offset_is_reported_again_after_twice_the_wait_until_it_moves():
    tails = LostTails(patience=2)
    first, second = [False, True], [False] * 3 + [True]  # 2 checks, then 4
    assert [tails.check(0, 340, 673) for _ in range(6)] == first + second
    assert [tails.check(0, 500, 673) for _ in range(2)] == [False, True]


def test_forgetting_starts_the_count_over():
    tails = LostTails(patience=2)
    tails.check(0, 340, 673)
    tails.forget()
    assert not tails.check(0, 340, 673)


# --- Progress: where each partition stands, without Kafka or Faust ---------------------------


class Store:
    """The progress table: what was stored, and the context each write was made in."""

    def __init__(self, stored: dict[int, int] | None = None):
        self.stored = dict(stored or {})
        self.writes: list[tuple[int, int, object]] = []

    def get(self, partition: int) -> int | None:
        return self.stored.get(partition)

    def set(self, partition: int, offset: int, context: object) -> None:
        self.stored[partition] = offset
        self.writes.append((partition, offset, context))


def acked(result=None) -> Future:
    send = Future()
    send.set_result(result)
    return send


def resume(progress: Progress, partition: int, committed: int = 0) -> int:
    async def committed_offset(p: int) -> int:
        return committed

    return asyncio.run(progress.resume_point(partition, "context", committed_offset))


def test_a_partition_resumes_from_its_stored_progress():
    progress = Progress(Store({0: 120}))
    assert resume(progress, 0, committed=100) == 120


def test_a_partition_never_processed_resumes_from_the_committed_offset_stored_at_once():
    store = Store()
    progress = Progress(store)
    assert resume(progress, 3, committed=100) == 100
    assert store.writes == [(3, 100, "context")]  # in the partition of the batch's event


def test_after_a_batch_a_partition_resumes_where_the_batch_ended():
    progress = Progress(Store({0: 120}))
    assert progress.record(progress.generation, {0: (150, "event", [Future()])})
    assert resume(progress, 0) == 150


def test_progress_is_stored_only_once_every_send_of_the_batch_is_acknowledged():
    store = Store({0: 100})
    progress = Progress(store)
    changelog, update = Future(), Future()
    progress.record(progress.generation, {0: (150, "event", [changelog, update])})
    progress.confirm()
    assert store.stored == {0: 100}
    changelog.set_result(None)
    progress.confirm()
    assert store.stored == {0: 100}  # the update is not acknowledged yet
    update.set_result(None)
    progress.confirm()
    assert store.stored == {0: 150} and store.writes == [(0, 150, "event")]
    assert progress.unconfirmed() == []


def test_batches_are_confirmed_in_order():
    store = Store({0: 100})
    progress = Progress(store)
    first, second = Future(), acked()
    progress.record(progress.generation, {0: (150, "first", [first])})
    progress.record(progress.generation, {0: (170, "second", [second])})
    progress.confirm()
    assert store.stored == {0: 100}  # the later batch is acknowledged, the earlier one is not
    assert progress.unconfirmed() == [first, second]
    first.set_result(None)
    progress.confirm()
    assert store.writes == [(0, 170, "second")]  # both at once: the last one's offset


def test_a_failed_send_is_never_confirmed():
    store = Store({0: 100})
    progress = Progress(store)
    failed = Future()
    failed.set_exception(OSError("broker gone"))
    progress.record(progress.generation, {0: (150, "event", [acked(), failed])})
    with pytest.raises(RuntimeError, match="events partition 0 was not written"):
        progress.confirm()
    assert store.stored == {0: 100}


def test_a_batch_that_straddles_a_revocation_records_nothing():
    store = Store({0: 100, 1: 40})
    progress = Progress(store)
    generation = progress.generation  # the batch starts
    progress.delivered(0, 149)
    progress.revoke([0])  # ... a rebalance takes partition 0 away mid-batch
    assert not progress.record(generation, {0: (150, "event", [acked()])})
    progress.confirm()
    assert store.writes == [] and progress.unconfirmed() == []
    assert resume(progress, 0) == 100  # back from the stored progress, not the lost batch
    assert progress.position(0) == 100  # nothing delivered since


def test_a_revocation_forgets_the_revoked_partitions_only():
    store = Store({0: 100, 1: 40})
    progress = Progress(store)
    pending = Future()
    progress.record(progress.generation, {0: (150, "a", [pending]), 1: (60, "b", [pending])})
    progress.delivered(1, 59)
    progress.revoke([0])
    assert progress.position(1) == 60 and resume(progress, 1) == 60
    assert progress.unconfirmed() == [pending]
    pending.set_result(None)
    progress.confirm()
    assert store.writes == [(1, 60, "b")]


def test_the_position_is_the_last_delivered_offset_else_the_stored_one():
    progress = Progress(Store({2: 70}))
    assert progress.position(2) == 70 and progress.position(5) is None
    progress.delivered(2, 80)
    assert progress.position(2) == 81


def test_a_replay_end_cuts_the_span_and_fills_holes_up_to_it():
    assert span(10, [10, 11, 15, 16], end=14) == ([(12, 14)], 14)
    assert span(10, [10, 11], end=14) == ([], 12)
    assert span(14, [20], end=14) == ([], 14)  # nothing left to replay
    assert span(10, [10, 13]) == holes(10, [10, 13])
