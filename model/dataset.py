"""From events to tensors: the item catalog, per-user sequences, splits and padded batches.

Index spaces: *catalog* indices 1..N cover every known item (row 0 = padding); *warm* indices
1..W cover the items seen in training (0 = cold). Models score catalog rows; only the id
embeddings use warm indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from model.config import EVENT_TYPES, event_type_index
from model.data import Event, Item
from model.encoder import ItemEncoder, item_text

__all__ = [
    "Case",
    "Catalog",
    "SeqBatch",
    "Split",
    "UserSeq",
    "build_split",
    "eval_batch",
    "train_batches",
]


def tensors_to(obj, device: torch.device | str):
    """A copy of a dataclass with every tensor field on `device` (other fields shared)."""
    tensors = {f.name: getattr(obj, f.name) for f in fields(obj)}
    return replace(obj, **{k: v.to(device) for k, v in tensors.items() if torch.is_tensor(v)})


@dataclass
class Catalog:
    item_ids: list[str]  # (N+1,) catalog index -> item id; index 0 is padding ""
    text: torch.Tensor  # (N+1, text_dim) float32; zero rows for items without text
    has_text: torch.Tensor  # (N+1,) bool
    categories: list[str]  # (C,)
    membership: torch.Tensor  # (N+1, C) float32, 1 where the item belongs to the category
    warm: torch.Tensor | None = None  # (N+1,) long warm index, 0 = cold; set by build_split

    def __len__(self) -> int:
        return len(self.item_ids)

    def to(self, device: torch.device | str) -> Catalog:
        return tensors_to(self, device)

    @classmethod
    def build(
        cls,
        events: Sequence[Event],
        items: dict[str, Item],
        encoder: ItemEncoder | None,
        text_dim: int = 0,
        progress: bool = False,
    ) -> Catalog:
        """All items of the catalog plus any item that only appears in events (without text).
        encoder None gives zero text vectors of width text_dim (id-only experiments, tests)."""
        ids = [""] + sorted(set(items) | {e.item_id for e in events})
        has_text = torch.tensor([i in items for i in ids])
        with_text = [ids[i] for i in range(len(ids)) if has_text[i]]
        if encoder is not None:
            texts = [
                item_text(i, items[i].title, items[i].description, items[i].categories)
                for i in with_text
            ]
            vecs = torch.from_numpy(encoder.encode(texts, progress=progress))
            text_dim = vecs.shape[1]
        text = torch.zeros(len(ids), text_dim)
        if encoder is not None and with_text:
            text[has_text] = vecs
        cats = sorted({c for it in items.values() for c in it.categories})
        col = {c: j for j, c in enumerate(cats)}
        membership = torch.zeros(len(ids), len(cats))
        for r, i in enumerate(ids):
            if i in items:
                for c in items[i].categories:
                    membership[r, col[c]] = 1.0
        return cls(ids, text, has_text, cats, membership)


@dataclass
class UserSeq:
    user_id: str
    items: np.ndarray  # (L,) int64 catalog indices
    types: np.ndarray  # (L,) int64 event-type indices
    ts: np.ndarray  # (L,) float64 seconds


@dataclass
class Case:
    """One evaluation case: predict `target` (catalog index) from `history`."""

    history: UserSeq
    target: int


@dataclass
class Split:
    train: list[UserSeq]
    val: list[Case]
    test: list[Case]
    holdout: set[int]  # catalog indices kept out of training entirely (item-holdout protocol)
    target_types: tuple[str, ...]
    stats: dict


def user_sequences(events: Sequence[Event], catalog: Catalog) -> list[UserSeq]:
    """Events (sorted by user, time) -> one sequence per user."""
    index = {item: i for i, item in enumerate(catalog.item_ids)}
    out, start = [], 0
    for end in range(1, len(events) + 1):
        if end == len(events) or events[end].user_id != events[start].user_id:
            chunk = events[start:end]
            out.append(
                UserSeq(
                    chunk[0].user_id,
                    np.array([index[e.item_id] for e in chunk], dtype=np.int64),
                    np.array([event_type_index(e.event_type) for e in chunk], dtype=np.int64),
                    np.array([e.timestamp for e in chunk], dtype=np.float64),
                )
            )
            start = end
    return out


def _cut(s: UserSeq, end: int, keep: np.ndarray | None = None) -> UserSeq:
    sl = slice(0, end)
    m = np.ones(end, dtype=bool) if keep is None else keep[sl]
    return UserSeq(s.user_id, s.items[sl][m], s.types[sl][m], s.ts[sl][m])


def build_split(
    events: Sequence[Event],
    catalog: Catalog,
    target_types: Sequence[str] = (),
    holdout_frac: float = 0.0,
    seed: int = 0,
) -> Split:
    """Leave-one-out: each user's last target event is the test case, the one before it the
    validation case; training uses the events before the validation target. Users with fewer
    than two target events (e.g. a single event) only contribute to training.

    target_types: event types that may be predicted (empty = all). holdout_frac: share of
    items (seeded) whose events are removed from training, to measure cold-start quality.
    Sets catalog.warm to the items seen in training.
    """
    target_types = tuple(target_types) or EVENT_TYPES
    want = np.array([event_type_index(t) for t in target_types])
    seqs = user_sequences(events, catalog)
    rng = np.random.default_rng(seed)
    used = np.unique(np.concatenate([s.items for s in seqs])) if seqs else np.zeros(0, np.int64)
    n_hold = int(round(holdout_frac * len(used)))
    holdout = set(rng.choice(used, size=n_hold, replace=False).tolist()) if n_hold else set()
    hold_mask = np.zeros(len(catalog), dtype=bool)
    hold_mask[list(holdout)] = True
    train, val, test = [], [], []
    for s in seqs:
        pos = np.flatnonzero(np.isin(s.types, want))
        pos = pos[pos >= 1]  # a target needs at least one event before it
        keep = ~hold_mask[s.items]
        if len(pos) < 2:
            train.append(_cut(s, len(s.items), keep))
            continue
        v, t = pos[-2], pos[-1]
        train.append(_cut(s, v, keep))
        val.append(Case(_cut(s, v), int(s.items[v])))
        test.append(Case(_cut(s, t), int(s.items[t])))
    train = [s for s in train if len(s.items) > 0]
    warm_items = np.unique(np.concatenate([s.items for s in train])) if train else []
    catalog.warm = torch.zeros(len(catalog), dtype=torch.long)
    catalog.warm[torch.as_tensor(warm_items, dtype=torch.long)] = torch.arange(
        1, len(warm_items) + 1
    )
    stats = dict(
        users=len(seqs),
        events=len(events),
        items=len(catalog) - 1,
        items_with_text=int(catalog.has_text[1:].sum()),
        warm_items=len(warm_items),
        holdout_items=len(holdout),
        train_events=int(sum(len(s.items) for s in train)),
        val_cases=len(val),
        test_cases=len(test),
        cold_test_cases=sum(int(catalog.warm[c.target] == 0) for c in test),
    )
    return Split(train, val, test, holdout, target_types, stats)


@dataclass
class SeqBatch:
    items: torch.Tensor  # (B, T) long catalog indices, right-padded with 0
    types: torch.Tensor  # (B, T) long
    ts: torch.Tensor  # (B, T) float64
    lengths: torch.Tensor  # (B,) long
    targets: torch.Tensor | None = None  # (B,) long catalog index (evaluation batches)

    def to(self, device: torch.device | str) -> SeqBatch:
        return tensors_to(self, device)


def _pad(seqs: Sequence[UserSeq], max_len: int | None) -> SeqBatch:
    cut = [
        (s.items[-max_len:], s.types[-max_len:], s.ts[-max_len:])
        if max_len
        else (s.items, s.types, s.ts)
        for s in seqs
    ]
    lengths = torch.tensor([len(c[0]) for c in cut])
    T = int(lengths.max())
    items = torch.zeros(len(cut), T, dtype=torch.long)
    types = torch.zeros(len(cut), T, dtype=torch.long)
    ts = torch.zeros(len(cut), T, dtype=torch.float64)
    for b, (i, ty, t) in enumerate(cut):
        n = len(i)
        items[b, :n], types[b, :n], ts[b, :n] = map(torch.from_numpy, (i, ty, t))
        ts[b, n:] = t[-1] if n else 0.0  # keep gaps at padded positions at zero
    return SeqBatch(items, types, ts, lengths)


def train_batches(
    seqs: Sequence[UserSeq], batch_size: int, rng: np.random.Generator, max_len: int | None = None
) -> list[SeqBatch]:
    """Batches of users of similar length (little padding), in random order. Sequences longer
    than max_len keep their last max_len events."""
    eff = np.array([min(len(s.items), max_len or len(s.items)) for s in seqs])
    order = np.argsort(eff + rng.random(len(seqs)), kind="stable")  # random among equal lengths
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(chunks)
    return [_pad([seqs[i] for i in c], max_len) for c in chunks]


def eval_batch(cases: Sequence[Case], max_len: int | None = None) -> SeqBatch:
    b = _pad([c.history for c in cases], max_len)
    b.targets = torch.tensor([c.target for c in cases])
    return b
