"""User state bytes: exact round trips, and clear refusals of foreign or damaged states."""

import struct

import pytest
import torch

from model.config import ModelConfig
from model.interest import InterestModel
from model.state import (
    FORMAT_VERSION,
    StateError,
    StateFormatError,
    StateVersionError,
    decode_states,
    encode_states,
)

CFG = ModelConfig(n_items=5, text_dim=8, d_model=8, window=3)


def stepped_states(counts):
    """A batch whose users have seen `counts` events each (random inputs)."""
    torch.manual_seed(0)
    model = InterestModel(CFG).eval()
    state = model.fresh_state(len(counts))
    with torch.no_grad():
        for t in range(max(counts)):
            new, _ = model.step(
                state,
                torch.randn(len(counts), CFG.d_model),
                torch.ones(len(counts), dtype=torch.long),
                torch.full((len(counts),), 1.7e9 + 0.123 * t, dtype=torch.float64),
            )
            active = torch.tensor([t < c for c in counts])
            for f in ("h", "c", "last_ts", "count", "interest"):
                getattr(state, f)[active] = getattr(new, f)[active]
            state.ring[active] = new.ring[active]
    return state


def assert_same(a, b):
    for f in ("h", "c", "ring", "last_ts", "count", "interest"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f


def test_round_trip_is_exact_for_new_partial_and_full_rings():
    state = stepped_states([0, 1, 2, 3, 7])
    blobs = encode_states(state, "abc123")
    assert all(isinstance(b, bytes) for b in blobs)
    assert len(blobs[0]) < len(blobs[2]) < len(blobs[3]) == len(blobs[4])  # only filled rows
    back = decode_states(blobs, "abc123", CFG.d_model, CFG.window)
    assert_same(back, state)
    assert back.last_ts.dtype == torch.float64 and back.last_ts[4].item() == 1.7e9 + 0.123 * 6


def test_none_decodes_to_a_fresh_state():
    state = stepped_states([2])
    back = decode_states([None, encode_states(state, "v1")[0]], "v1", CFG.d_model, CFG.window)
    assert back.count.tolist() == [0, 2]
    assert back.h[0].abs().sum() == 0 and back.ring[0].abs().sum() == 0
    torch.testing.assert_close(back.h[1], state.h[0], atol=0, rtol=0)


def test_state_of_another_model_version_is_rejected():
    blob = encode_states(stepped_states([2]), "v1")[0]
    with pytest.raises(StateVersionError, match="model version 'v1', not 'v2'"):
        decode_states([blob], "v2", CFG.d_model, CFG.window)


def test_state_of_another_format_version_is_rejected():
    blob = bytearray(encode_states(stepped_states([2]), "v1")[0])
    struct.pack_into("<H", blob, 4, FORMAT_VERSION + 1)
    with pytest.raises(StateVersionError, match="format version"):
        decode_states([bytes(blob)], "v1", CFG.d_model, CFG.window)


@pytest.mark.parametrize("damage", ["truncated", "magic", "shape", "short"])
def test_damaged_states_raise_format_errors(damage):
    blob = encode_states(stepped_states([2]), "v1")[0]
    bad, d, k = blob, CFG.d_model, CFG.window
    if damage == "truncated":
        bad = blob[:-4]
    elif damage == "magic":
        bad = b"JSON" + blob[4:]
    elif damage == "shape":
        d = CFG.d_model * 2
    else:
        bad = blob[:10]
    with pytest.raises(StateFormatError):
        decode_states([bad], "v1", d, k)


def test_errors_share_one_base_class_and_versions_are_validated():
    assert issubclass(StateVersionError, StateError) and issubclass(StateFormatError, StateError)
    with pytest.raises(ValueError, match="1..16 ASCII"):
        encode_states(stepped_states([1]), "x" * 17)
