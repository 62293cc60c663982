from stream.progress import LostTails, holes


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
