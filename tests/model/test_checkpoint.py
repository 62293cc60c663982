"""Checkpoints: what the streaming engine loads, steps and stores."""

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, model_version, save_checkpoint
from model.config import ModelConfig
from model.interest import InterestModel, category_shift, top_n
from model.state import StateVersionError

CFG = ModelConfig(n_items=4, text_dim=12, d_model=8, window=3)


def make(tmp_path, seed=0, name="ckpt.pt"):
    torch.manual_seed(seed)
    model = InterestModel(CFG)
    path = tmp_path / name
    version = save_checkpoint(
        path, model, {"a": 1, "b": 2, "c": 3}, ["x", "y"], "tiny", meta={"best_val_ndcg10": 0.5}
    )
    return model, path, version


def test_checkpoint_round_trip_serves_the_same_model(tmp_path):
    model, path, version = make(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt.version == version == model_version(ckpt.model)
    assert not ckpt.model.training
    assert ckpt.config == CFG and ckpt.text_dim == 12 and ckpt.encoder_name == "tiny"
    assert ckpt.item_index == {"a": 1, "b": 2, "c": 3} and ckpt.categories == ["x", "y"]
    assert ckpt.meta["best_val_ndcg10"] == 0.5
    text = torch.randn(5, 12)
    warm = ckpt.warm_indices(["a", "b", "new", "c", "other"])
    assert warm.tolist() == [1, 2, 0, 3, 0]
    model.eval()
    torch.testing.assert_close(
        ckpt.model.item_representations(text, warm),
        model.item_representations(text, warm),
        atol=0,
        rtol=0,
    )


def test_the_serving_contract_end_to_end(tmp_path):
    _, path, _ = make(tmp_path)
    ckpt = load_checkpoint(path, device="cpu")
    reps = ckpt.model.item_representations(torch.randn(6, 12), torch.tensor([1, 2, 3, 0, 0, 0]))
    membership = torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 1], [1, 0], [0, 0]])
    blobs = [None, None, None]
    with torch.no_grad():
        for t in range(4):  # one event per user per micro-batch
            states = ckpt.decode_states(blobs)
            new, out = ckpt.model.step(
                states,
                reps[[0, t, 5]],
                torch.tensor([1, 2, 1]),
                torch.full((3,), 1.7e9 + t, dtype=torch.float64),
            )
            scores, idx = top_n(out.interest, reps, 3)
            dist, shift = category_shift(out, reps, membership)
            blobs = ckpt.encode_states(new)
    assert idx.shape == scores.shape == (3, 3)
    assert dist.shape == shift.shape == (3, 2)
    torch.testing.assert_close(shift.sum(1), torch.zeros(3), atol=1e-6, rtol=0)
    assert ckpt.decode_states(blobs).count.tolist() == [4, 4, 4]


def test_states_from_another_checkpoint_are_refused(tmp_path):
    _, path_a, va = make(tmp_path, seed=0, name="a.pt")
    _, path_b, vb = make(tmp_path, seed=1, name="b.pt")
    assert va != vb  # different weights, different version
    a, b = load_checkpoint(path_a), load_checkpoint(path_b)
    blobs = a.encode_states(a.model.fresh_state(2))
    with pytest.raises(StateVersionError, match=va):
        b.decode_states(blobs)


def test_unknown_item_vector_is_the_textless_cold_representation(tmp_path):
    _, path, _ = make(tmp_path)
    ckpt = load_checkpoint(path)
    v = ckpt.unknown_item_vector()
    assert v.shape == (8,)
    reps = ckpt.model.item_representations(torch.zeros(1, 12), torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(v, reps[0])
    assert not v.any()  # neither text nor id: nothing to score or to feed the recurrence


def test_weights_of_another_architecture_are_refused_in_one_line(tmp_path):
    _, path, _ = make(tmp_path)
    raw = torch.load(path, weights_only=True)
    raw["model"] = {k: v for k, v in raw["model"].items() if not k.startswith("attn.")}
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="another version of the interest model"):
        load_checkpoint(path)
