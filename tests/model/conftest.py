"""Fixtures for model tests: a tiny random BERT and small synthetic event logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

WORDS = """action comedy drama space war love robot ship star city night day dog cat music
sport news money game film story world life man woman king queen war peace fast slow""".split()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A randomly initialised 1-layer BERT (hidden 32) with a word-level vocab, saved locally."""
    from transformers import BertConfig, BertModel, BertTokenizer

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(path)
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def synthetic_log(n_users: int = 30, n_items: int = 24, seed: int = 0):
    """Users walk through items in a fixed cycle (item i is followed by i+1), so a sequence
    model can learn it; odd items are clicks, even ones views. Returns (events, items) rows."""
    g = torch.Generator().manual_seed(seed)
    items = [
        dict(
            item_id=f"i{i}",
            title=f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i) % len(WORDS)]}",
            description="",
            categories=[["action", "comedy", "drama"][i % 3]],
        )
        for i in range(n_items)
    ]
    events = []
    for u in range(n_users):
        start = int(torch.randint(n_items, (1,), generator=g))
        length = 1 + int(torch.randint(12, (1,), generator=g))
        for k in range(length):
            i = (start + k) % n_items
            events.append(
                dict(
                    event_id=f"u{u}e{k}",
                    user_id=f"u{u}",
                    item_id=f"i{i}",
                    event_type="click" if i % 2 else "view",
                    timestamp=f"2024-01-01T{k:02d}:{u % 60:02d}:00Z",
                    dwell_ms=None,
                    context=None,
                )
            )
    return events, items


@pytest.fixture
def jsonl_data(tmp_path):
    events, items = synthetic_log()
    return (
        str(write_jsonl(tmp_path / "events.jsonl", events)),
        str(write_jsonl(tmp_path / "items.jsonl", items)),
    )
