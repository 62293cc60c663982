"""A new item is recommendable on its text alone: when its text fits a user's history better than
any warm item's, the trained model ranks it first."""

import numpy as np
import torch

from model.data import Event
from model.dataset import Case, Catalog, UserSeq, build_split, user_sequences
from model.evaluate import evaluate
from model.train import Ours, TrainConfig, fit, new_model

TOPICS, PER_TOPIC, TEXT_DIM = 4, 10, 16


def topic_world(seed: int = 0):
    """Items of four topics whose text vectors scatter around the topic's direction; every user
    reads every item of one topic, in a random order. Returns the events and the catalog, which
    also holds one item per topic that no event mentions (cold), at the topic's centre."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(TEXT_DIM, TOPICS)))[0].T  # (TOPICS, TEXT_DIM)
    warm_ids = [f"t{t}-{i}" for t in range(TOPICS) for i in range(PER_TOPIC)]
    cold_ids = [f"t{t}-new" for t in range(TOPICS)]
    ids = ["", *warm_ids, *cold_ids]
    text = np.zeros((len(ids), TEXT_DIM), dtype=np.float32)
    for t in range(TOPICS):
        rows = slice(1 + t * PER_TOPIC, 1 + (t + 1) * PER_TOPIC)
        text[rows] = directions[t] + 0.6 * rng.normal(size=(PER_TOPIC, TEXT_DIM))
        text[1 + len(warm_ids) + t] = directions[t]  # the cold item: the topic's very centre
    events = []
    for u in range(160):
        t = u % TOPICS
        for n, i in enumerate(rng.permutation(PER_TOPIC)):
            events.append(Event(f"u{u}:{n}", f"u{u}", f"t{t}-{i}", "click", 1.7e9 + 60.0 * n))
    cat = Catalog(
        item_ids=ids,
        text=torch.from_numpy(text),
        has_text=torch.ones(len(ids), dtype=torch.bool),
        categories=[],
        membership=torch.zeros(len(ids), 0),
    )
    return events, cat


def test_a_cold_item_whose_text_fits_best_is_ranked_first():
    events, cat = topic_world()
    split = build_split(events, cat)
    cold_rows = [cat.item_ids.index(f"t{t}-new") for t in range(TOPICS)]
    assert all(int(cat.warm[r]) == 0 for r in cold_rows)  # never seen in training
    torch.manual_seed(0)
    model = Ours(new_model(cat, d_model=16, window=4))
    fit(model, split, cat, TrainConfig(epochs=60, batch_size=32, lr=5e-3, progress=False))

    # after the user's whole history (every warm item of the topic, so each warm candidate
    # left is of another topic), the cold item of the user's topic is the best fit
    cases = [
        Case(whole(c.history, s), cold_rows[int(s.user_id[1:]) % TOPICS])
        for c, s in zip(split.test, user_sequences(events, cat), strict=True)
    ]
    result = evaluate(model, cases, cat, ks=(1,))
    assert result["cold_cases"] == len(cases) > 100
    assert result["hr@1"] >= 0.9, result  # top of the list, above every warm item of the topic

    # and its text is what ranks it: the cold item of another topic is not ranked first
    other = [Case(c.history, cold_rows[(cold_rows.index(c.target) + 1) % TOPICS]) for c in cases]
    assert evaluate(model, other, cat, ks=(1,))["hr@1"] == 0.0


def whole(history: UserSeq, seq: UserSeq) -> UserSeq:
    assert history.user_id == seq.user_id and len(seq.items) == PER_TOPIC
    return seq
