"""Item text encoder: pooling, caching, fallbacks, and the real offline MiniLM weights."""

import numpy as np

from model.encoder import DEFAULT_ENCODER, ItemEncoder, item_text, resolve_encoder


def test_vectors_are_normalised_and_independent_of_batch_padding(tiny_bert, tmp_path):
    enc = ItemEncoder(tiny_bert, cache_dir=None, batch_size=8)
    short = "space robot"
    alone = enc.encode([short])
    padded = enc.encode([short, "war love city night day dog cat music sport news money"])
    assert alone.shape == (1, 32) and alone.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(padded, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)  # padding tokens are masked out
    assert not np.allclose(padded[0], padded[1])


def test_cache_is_keyed_by_text_and_skips_the_model(tiny_bert, tmp_path):
    first = ItemEncoder(tiny_bert, cache_dir=tmp_path)
    a = first.encode(["space robot", "love story", "space robot"])
    np.testing.assert_array_equal(a[0], a[2])
    second = ItemEncoder(tiny_bert, cache_dir=tmp_path)
    b = second.encode(["love story", "space robot"])
    assert second._bert is None  # every text was a cache hit: the weights never loaded
    np.testing.assert_array_equal(b, a[[1, 0]])
    assert second.encode(["a new text"]).shape == (1, 32)  # a miss loads and encodes
    assert second._bert is not None
    other = ItemEncoder(tiny_bert + "/", cache_dir=tmp_path)  # another encoder name: own cache
    other.encode(["love story"])
    assert other._bert is not None


def test_item_text_falls_back_to_the_id_when_every_field_is_empty(tiny_bert):
    assert (
        item_text("i7", "Toy Story", "", ["Animation", "Comedy"]) == "Toy Story. Animation, Comedy"
    )
    assert item_text("i7", " ", "", []) == "item i7"
    vec = ItemEncoder(tiny_bert, cache_dir=None).encode([item_text("i7", "", "", [])])
    assert np.isfinite(vec).all() and abs(np.linalg.norm(vec) - 1) < 1e-5


def test_real_minilm_weights_load_offline_and_embed_meaningfully(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = ItemEncoder(DEFAULT_ENCODER, cache_dir=tmp_path)
    v = enc.encode(
        [
            "Toy Story (1995). Animation, Children's, Comedy",
            "A Bug's Life (1998). Animation, Children's, Comedy",
            "Schindler's List (1993). Drama, War",
        ]
    )
    assert v.shape == (3, 384) and enc.dim == 384
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.1 and sim[0, 1] > sim[1, 2] + 0.1
    assert resolve_encoder(DEFAULT_ENCODER).endswith("model")
