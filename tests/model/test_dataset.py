"""Catalog, leave-one-out split, item holdout and padded batches."""

import numpy as np
import pytest
import torch

from model.data import Event, Item
from model.dataset import Catalog, build_split, eval_batch, train_batches
from model.encoder import ItemEncoder


def ev(user, item, ts, kind="click"):
    return Event(f"{user}-{ts}", user, item, kind, float(ts))


def events_of(spec):
    """spec: {user: "abcd"} -> events on items a, b, c, d in order, one second apart."""
    out = [
        ev(u, i, t, "view" if i.isupper() else "click")
        for u, s in spec.items()
        for t, i in enumerate(s)
    ]
    return sorted(out, key=lambda e: (e.user_id, e.timestamp))


def test_catalog_covers_items_with_and_without_text(tiny_bert):
    items = {"a": Item("a", "space robot"), "b": Item("b", "", "", ()), "c": Item("c", "war")}
    events = events_of({"u": "ax"})  # "x" is in the log but not in the catalog
    cat = Catalog.build(events, items, ItemEncoder(tiny_bert, cache_dir=None))
    assert cat.item_ids == ["", "a", "b", "c", "x"]
    assert cat.has_text.tolist() == [False, True, True, True, False]
    assert cat.text.shape == (5, 32)
    assert cat.text[2].norm() > 0.99  # empty text still gets a vector (from the id)
    assert cat.text[4].abs().sum() == 0  # no catalog row: no text, zero vector


def test_leave_one_out_split_and_short_users():
    events = events_of({"long": "abcdef", "two": "ab", "one": "c"})
    cat = Catalog.build(events, {}, None, text_dim=4)
    split = build_split(events, cat)
    idx = {i: n for n, i in enumerate(cat.item_ids)}
    by_user = {s.user_id: s for s in split.train}
    assert [cat.item_ids[i] for i in by_user["long"].items] == list("abcd")
    assert [cat.item_ids[i] for i in by_user["two"].items] == list("ab")  # too short: train only
    assert [cat.item_ids[i] for i in by_user["one"].items] == ["c"]
    assert len(split.val) == len(split.test) == 1
    assert split.val[0].target == idx["e"] and len(split.val[0].history.items) == 4
    assert split.test[0].target == idx["f"] and len(split.test[0].history.items) == 5
    assert split.stats["test_cases"] == 1 and split.stats["users"] == 3
    assert (cat.warm[[idx[i] for i in "abcd"]] > 0).all()
    assert cat.warm[idx["e"]] == 0 and cat.warm[idx["f"]] == 0  # only seen as targets: cold


def test_target_types_pick_the_last_clicks():
    events = events_of({"u": "abcDEfG"})  # upper case = view
    cat = Catalog.build(events, {}, None, text_dim=4)
    split = build_split(events, cat, target_types=["click"])
    assert cat.item_ids[split.test[0].target] == "f"
    assert cat.item_ids[split.val[0].target] == "c"
    assert [cat.item_ids[i] for i in split.test[0].history.items] == list("abcDE")
    with pytest.raises(ValueError, match="unknown event type"):
        build_split(events, cat, target_types=["like"])


def test_item_holdout_keeps_items_out_of_training_only():
    events = events_of({f"u{k}": "abcdefghij"[k:] + "abcdefghij"[:k] for k in range(10)})
    cat = Catalog.build(events, {}, None, text_dim=4)
    split = build_split(events, cat, holdout_frac=0.2, seed=3)
    assert len(split.holdout) == 2
    for s in split.train:
        assert not set(s.items.tolist()) & split.holdout
    assert all(cat.warm[i] == 0 for i in split.holdout)
    assert any(set(c.history.items.tolist()) & split.holdout for c in split.test)
    again = build_split(
        events, Catalog.build(events, {}, None, text_dim=4), holdout_frac=0.2, seed=3
    )
    assert again.holdout == split.holdout  # seeded


def test_batches_are_right_padded_and_truncated_from_the_left():
    events = events_of({"a": "abcdef", "b": "ab", "c": "abc"})
    cat = Catalog.build(events, {}, None, text_dim=4)
    split = build_split(events, cat)
    batches = train_batches(split.train, 2, np.random.default_rng(0), max_len=3)
    # "a" trains on abcd (cut to bcd), "b" is too short to split, "c" keeps a before val b
    assert sorted(int(n) for b in batches for n in b.lengths) == [1, 2, 3]
    for b in batches:
        for row, n in zip(b.items, b.lengths, strict=True):
            assert (row[n:] == 0).all() and (row[:n] > 0).all()
    b = eval_batch(split.test, max_len=2)
    assert b.items.shape == (2, 2) and b.targets.tolist() == [c.target for c in split.test]
    assert b.ts.dtype == torch.float64
