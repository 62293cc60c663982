"""The interest model: streaming `step` equals `forward_sequence`, and the heads behave."""

import pytest
import torch

from model.config import ModelConfig
from model.interest import InterestModel, category_distribution, category_shift, top_n

CFG = ModelConfig(n_items=20, text_dim=12, d_model=16, window=4, dropout=0.1, id_dropout=0.5)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return InterestModel(CFG).eval()


def random_batch(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    vecs = torch.randn(B, T, CFG.d_model, generator=g)
    types = torch.randint(1, CFG.n_event_types, (B, T), generator=g)
    gaps = torch.rand(B, T, generator=g, dtype=torch.float64) * 5000
    ts = 1.7e9 + torch.cumsum(gaps, dim=1)
    return vecs, types, ts


def test_step_matches_forward_sequence_for_users_of_different_lengths(model):
    lengths = [9, 1, 4, 6]  # shorter and longer than the window K=4
    vecs, types, ts = random_batch(lengths)
    reps = torch.randn(30, CFG.d_model)
    with torch.no_grad():
        memory, interest = model.forward_sequence(vecs, types, ts)  # (B, T, d)
        state = model.fresh_state(len(lengths))
        for t in range(max(lengths)):
            # every user's row is stepped; rows past their length are simply ignored below
            state, out = model.step(state, vecs[:, t], types[:, t], ts[:, t])
            for b, n in enumerate(lengths):
                if t < n:
                    assert (out.interest[b] - interest[b, t]).abs().max() <= 1e-5
                    assert (state.ring[b, -1] - memory[b, t]).abs().max() <= 1e-5
                    assert (out.interest[b] @ reps.T - interest[b, t] @ reps.T).abs().max() <= 1e-5
                if t == n - 1:  # the user's final state: ring holds its last K memory slots
                    k = min(n, CFG.window)
                    assert (state.ring[b, -k:] - memory[b, n - k : n]).abs().max() <= 1e-5
                    assert int(state.count[b]) == n
                    assert state.last_ts[b].item() == ts[b, n - 1].item()


def test_attention_weights_cover_the_events_a_user_has_and_are_read_back_from_the_state(model):
    vecs, types, ts = random_batch([6, 6])
    with torch.no_grad():
        state = model.fresh_state(2)
        for t in range(6):
            state, out = model.step(state, vecs[:, t], types[:, t], ts[:, t])
            seen = min(t + 1, CFG.window)  # slots holding an event, at the newest end
            assert (out.attention[:, : CFG.window - seen] == 0).all()
            assert (out.attention[:, CFG.window - seen :] > 0).all()
            torch.testing.assert_close(out.attention.sum(-1), torch.ones(2))
            torch.testing.assert_close(model.window_attention(state), out.attention)


def test_users_are_independent_within_a_batch(model):
    vecs, types, ts = random_batch([5, 5])
    with torch.no_grad():
        _, both = model.forward_sequence(vecs, types, ts)
        _, alone = model.forward_sequence(vecs[:1], types[:1], ts[:1])
    torch.testing.assert_close(both[0], alone[0], atol=1e-6, rtol=0)


def test_time_gaps_and_event_types_change_the_interest(model):
    vecs, types, ts = random_batch([3])
    with torch.no_grad():
        _, base = model.forward_sequence(vecs, types, ts)
        _, later = model.forward_sequence(vecs, types, ts + torch.tensor([[0.0, 0.0, 86400.0]]))
        _, flipped = model.forward_sequence(vecs, 3 - types, ts)
    assert not torch.allclose(base[0, 2], later[0, 2])
    assert not torch.allclose(base, flipped)
    torch.testing.assert_close(base[0, :2], later[0, :2])  # only the later step is affected


def test_step_rejects_float32_timestamps_and_unknown_event_types(model):
    state = model.fresh_state(2)
    vecs = torch.randn(2, CFG.d_model)
    with pytest.raises(TypeError, match="float64"):
        model.step(state, vecs, torch.tensor([1, 2]), torch.tensor([1.0, 2.0]))
    for bad in (0, CFG.n_event_types):
        with pytest.raises(ValueError, match="event_type"):
            model.step(state, vecs, torch.tensor([1, bad]), torch.tensor([1.0, 2.0]).double())


def test_cold_items_are_represented_from_text_and_id_dropout_only_trains(model):
    text = torch.randn(3, CFG.text_dim)
    warm = torch.tensor([0, 5, 5])
    reps = model.item_representations(text, warm)
    assert reps.shape == (3, CFG.d_model)
    assert reps[0].abs().sum() > 0  # cold item: text alone
    torch.testing.assert_close(reps[0], model.text_proj(text[:1])[0])
    assert not torch.allclose(reps[1], model.text_proj(text[1:2])[0])  # warm: text + id
    torch.testing.assert_close(model.item_representations(text, warm), reps)  # eval: no noise
    model.train()
    torch.manual_seed(0)
    dropped = torch.stack([model.item_representations(text, warm)[1] for _ in range(40)])
    assert len({tuple(r.tolist()) for r in dropped}) == 2  # with and without the id vector


def test_a_textless_item_keeps_its_id_vector_in_training(model):
    text = torch.randn(2, CFG.text_dim)
    text[1] = 0.0  # no text: the id vector is all the item has
    warm = torch.tensor([3, 4])
    model.train()
    torch.manual_seed(0)
    reps = torch.stack([model.item_representations(text, warm) for _ in range(40)])  # (40, 2, d)
    assert len({tuple(r.tolist()) for r in reps[:, 0]}) == 2  # the text item's id is dropped
    for rep in reps[:, 1]:
        torch.testing.assert_close(rep, model.id_emb.weight[4])


def test_top_n_excludes_and_orders():
    interest = torch.tensor([[1.0, 0.0]])
    reps = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    scores, idx = top_n(interest, reps, 2)
    assert idx.tolist() == [[0, 1]] and scores.tolist() == [[3.0, 2.0]]
    _, idx = top_n(interest, reps, 2, exclude=torch.tensor([[True, False, False, False]]))
    assert idx.tolist() == [[1, 2]]
    assert top_n(interest, reps, 10)[1].shape == (1, 4)  # n larger than the catalog


def test_category_distribution_and_shift():
    reps = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    membership = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    to_a, to_b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    dist = category_distribution(torch.cat([to_a, to_b]), reps, membership)
    torch.testing.assert_close(dist.sum(1), torch.ones(2))
    assert dist[0].argmax() == 0 and dist[1].argmax() == 1
    assert dist[1, 2] > dist[0, 2]  # a category added later (column 2) works at once

    from model.interest import StepOutput

    new, shift = category_shift(StepOutput(interest=to_b, prev_interest=to_a), reps, membership)
    torch.testing.assert_close(new, dist[1:])
    torch.testing.assert_close(shift, dist[1:] - dist[:1])
    assert shift[0, 1] > 0 > shift[0, 0]


def test_step_events_applies_several_events_per_user_in_order(model):
    from model.serving import step_events

    g = torch.Generator().manual_seed(3)
    users = torch.tensor([0, 0, 0, 1, 1, 2])  # user 0 has three events, user 1 two, user 2 one
    vecs = torch.randn(6, CFG.d_model, generator=g)
    types = torch.randint(1, CFG.n_event_types, (6,), generator=g)
    ts = 1.7e9 + torch.arange(6, dtype=torch.float64) * 60
    start = model.fresh_state(3)
    with torch.no_grad():
        new, out = step_events(model, start, users, vecs, types, ts)
        for u in range(3):
            ev = torch.nonzero(users == u).squeeze(1)
            mem, interest = model.forward_sequence(vecs[ev][None], types[ev][None], ts[ev][None])
            torch.testing.assert_close(out.interest[ev], interest[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(new.ring[u, -1], mem[0, -1], atol=1e-5, rtol=0)
            assert int(new.count[u]) == len(ev) and new.last_ts[u] == ts[ev[-1]]
        torch.testing.assert_close(out.attention[[2, 4, 5]], model.window_attention(new))
    assert start.count.tolist() == [0, 0, 0]  # the input states are left untouched


def test_step_events_rejects_events_not_grouped_by_user(model):
    from model.serving import step_events

    vecs, types = torch.zeros(3, CFG.d_model), torch.ones(3, dtype=torch.long)
    ts = 1.7e9 + torch.arange(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="grouped by user"):
        step_events(model, model.fresh_state(2), torch.tensor([0, 1, 0]), vecs, types, ts)


@pytest.mark.parametrize(
    "runs",
    [[1, 1, 1], [2, 2, 2], [3, 1, 2], [0, 2, 1]],
    ids=["one-each", "equal-runs", "unequal-runs", "a-user-without-events"],
)
def test_step_events_equals_step_after_step_from_stored_states(model, runs):
    from model.serving import step_events

    g = torch.Generator().manual_seed(5)
    state = model.fresh_state(len(runs))
    with torch.no_grad():  # states with some history: their rings and timestamps matter
        for warmup in range(CFG.window + 2):
            vecs = torch.randn(len(runs), CFG.d_model, generator=g)
            ts = torch.full((len(runs),), 1.7e9 + warmup * 30.0, dtype=torch.float64)
            state, _ = model.step(state, vecs, torch.ones(len(runs), dtype=torch.long), ts)
        users = torch.repeat_interleave(torch.arange(len(runs)), torch.tensor(runs))
        vecs = torch.randn(len(users), CFG.d_model, generator=g)
        types = torch.randint(1, CFG.n_event_types, (len(users),), generator=g)
        ts = 1.8e9 + torch.arange(len(users), dtype=torch.float64) * 45
        new, out = step_events(model, state, users, vecs, types, ts)
        for u, run in enumerate(runs):
            expected = state.select(torch.tensor([u]))
            for e in torch.nonzero(users == u).squeeze(1).tolist():
                before = expected.interest
                expected, step = model.step(
                    expected, vecs[e : e + 1], types[e : e + 1], ts[e : e + 1]
                )
                torch.testing.assert_close(out.interest[e], step.interest[0], atol=1e-5, rtol=0)
                torch.testing.assert_close(out.prev_interest[e], before[0], atol=1e-5, rtol=0)
            for field in ("h", "c", "ring", "interest"):
                torch.testing.assert_close(
                    getattr(new, field)[u], getattr(expected, field)[0], atol=1e-5, rtol=0
                )
            assert int(new.count[u]) == int(state.count[u]) + run
