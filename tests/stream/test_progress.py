from stream.progress import holes


def test_contiguous_offsets_leave_no_hole():
    assert holes(10, [10, 11, 12]) == ([], 13)


def test_a_batch_that_starts_late_is_preceded_by_the_missing_range():
    assert holes(10, [42, 43]) == ([(10, 42)], 44)


def test_holes_inside_a_batch_are_found_too():
    assert holes(0, [0, 1, 5, 6, 9]) == ([(2, 5), (7, 9)], 10)


def test_redelivered_offsets_are_not_holes_and_never_move_progress_back():
    assert holes(50, [40, 41, 50, 51]) == ([], 52)
    assert holes(50, [40, 41]) == ([], 50)
