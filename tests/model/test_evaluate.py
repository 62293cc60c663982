"""Full-ranking metrics: exact ranks, exclusion of seen items, ties, cold targets."""

import math

import numpy as np
import torch
from torch import nn

from model.dataset import Case, Catalog, UserSeq
from model.evaluate import evaluate


class FixedScores(nn.Module):
    """Scores item i as `scores[i]` for every user."""

    max_len = None

    def __init__(self, scores, id_only=False):
        super().__init__()
        self.scores, self.id_only = torch.tensor(scores), id_only

    def item_matrix(self, cat):
        return self.scores.unsqueeze(1)  # (N+1, 1)

    def encode(self, batch, mat):
        return torch.ones(*batch.items.shape, 1)


def catalog(n, cold=()):
    cat = Catalog(
        [""] + [f"i{i}" for i in range(1, n + 1)],
        torch.zeros(n + 1, 1),
        torch.ones(n + 1, dtype=torch.bool),
        [],
        torch.zeros(n + 1, 0),
    )
    cat.warm = torch.arange(n + 1)
    cat.warm[list(cold)] = 0
    return cat


def case(history, target):
    h = np.array(history, dtype=np.int64)
    return Case(UserSeq("u", h, np.ones_like(h), np.arange(len(h), dtype=np.float64)), target)


def test_ranks_exclude_the_history_but_not_the_target():
    model = FixedScores([0.0] + [float(20 - i) for i in range(1, 21)])  # item 1 best ... 20 worst
    cat = catalog(20)
    res = evaluate(model, [case([1, 2, 3], 5)], cat)  # 1..3 excluded: 4 beats 5 -> rank 1
    assert res["hr@10"] == 1.0 and math.isclose(res["ndcg@10"], 1 / math.log2(3))
    res = evaluate(model, [case([1], 12), case([5], 15)], cat)  # ranks 10 and 13
    assert res["hr@10"] == 0.0 and res["hr@20"] == 1.0
    assert math.isclose(res["ndcg@20"], (1 / math.log2(12) + 1 / math.log2(15)) / 2)
    res = evaluate(model, [case([2, 4], 4)], cat)  # target seen before (a repeat): 1, 3 beat it
    assert res["hr@10"] == 1.0 and math.isclose(res["ndcg@10"], 1 / math.log2(4))


def test_ties_are_broken_at_random_with_a_seed():
    model = FixedScores([0.0] + [1.0] * 100)
    cases = [case([1], t) for t in range(2, 100)]
    a = evaluate(model, cases, catalog(100), seed=1)
    assert a == evaluate(model, cases, catalog(100), seed=1)
    assert a["cold_cases"] == 0 and a["cold_hr@10"] is None
    assert 0.0 < a["hr@10"] < 0.3  # about 10 of 99 tied positions, not all first or all last
    assert a != evaluate(model, cases, catalog(100), seed=2)


def test_cold_targets_are_reported_apart_and_id_only_models_miss_them():
    scores = [0.0, 1.0, 5.0, 3.0, 2.0]
    cases = [case([1], 2), case([1], 3)]
    cat = catalog(4, cold=[2])
    ours = evaluate(FixedScores(scores), cases, cat)
    ids = evaluate(FixedScores(scores, id_only=True), cases, cat)
    assert ours["cold_cases"] == 1 and ours["cold_hr@10"] == 1.0 and ours["hr@10"] == 1.0
    assert ids["cold_hr@10"] == 0.0 and ids["hr@10"] == 0.5
    assert math.isclose(ids["ndcg@10"], 0.5)  # item 3 ranks first once item 2 is unscorable
    cat.has_text[2] = False  # cold and without text: nothing to represent it by
    assert evaluate(FixedScores(scores), cases, cat)["cold_hr@10"] == 0.0
