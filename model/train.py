"""Training harness for the interest model and the baselines, and the `currents train` command.

Harness protocol, shared by every model so that all are trained and scored alike:
`item_matrix(catalog) -> (N+1, d)` item vectors, `encode(batch, mat) -> (B, T, d)` one output
per position, scores = outputs @ item_matrix.T; `id_only` (cannot score cold items) and
`max_len` (last events read; None = all). Position t is trained to predict event t+1.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from model.checkpoint import save_checkpoint
from model.config import ModelConfig, event_type_index
from model.data import FORMATS, Event, load_dataset
from model.dataset import Catalog, SeqBatch, Split, build_split, train_batches
from model.encoder import ItemEncoder, default_encoder
from model.evaluate import evaluate
from model.interest import InterestModel

__all__ = ["Ours", "TrainConfig", "add_arguments", "fit", "prepare_data", "run"]


class Ours(nn.Module):
    """The interest model seen through the harness protocol."""

    id_only = False
    max_len = None  # a streaming model reads the whole history

    def __init__(self, model: InterestModel):
        super().__init__()
        self.model = model

    def item_matrix(self, cat: Catalog) -> torch.Tensor:
        return self.model.item_representations(cat.text, cat.warm)

    def encode(self, batch: SeqBatch, mat: torch.Tensor) -> torch.Tensor:
        return self.model.forward_sequence(mat[batch.items], batch.types, batch.ts)[1]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    batch_size: int = 32
    lr: float = 5e-3
    weight_decay: float = 0.0
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    negatives: int = 0  # 0 = softmax over all training items; >0 = sampled softmax
    max_len: int | None = None  # truncate training sequences (None = the model's own max_len)
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> TrainConfig:
        return cls(
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            weight_decay=a.weight_decay,
            patience=a.patience,
            negatives=a.negatives,
            max_len=a.max_len,
            seed=a.seed,
            progress=not a.quiet,
        )


def sequence_loss(
    model,
    batch: SeqBatch,
    cat: Catalog,
    cfg: TrainConfig,
    target_idx: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """Mean cross-entropy of predicting each next target event over the training items."""
    mat = model.item_matrix(cat)  # (N+1, d)
    out = model.encode(batch, mat)[:, :-1]  # (B, T-1, d): position t predicts t+1
    T = batch.items.shape[1]
    pos = torch.arange(T - 1) < (batch.lengths - 1).unsqueeze(1)  # (B, T-1) real pairs
    pos &= torch.isin(batch.types[:, 1:], target_idx)
    h, y = out[pos], batch.items[:, 1:][pos]  # (n, d), (n,)
    if len(y) == 0:  # e.g. only views in this batch when clicks are the targets
        return out.sum() * 0.0
    warm = cat.warm > 0  # training only ever ranks items seen in training
    if cfg.negatives <= 0:
        logits = (h @ mat.T).masked_fill(~warm, float("-inf"))  # (n, N+1)
        return F.cross_entropy(logits, y)
    pool = torch.nonzero(warm).squeeze(1)
    neg = pool[torch.randint(len(pool), (cfg.negatives,), generator=gen)]  # shared negatives
    logits = torch.cat([(h * mat[y]).sum(-1, keepdim=True), h @ mat[neg].T], dim=1)
    logits[:, 1:] = logits[:, 1:].masked_fill(neg.unsqueeze(0) == y.unsqueeze(1), float("-inf"))
    return F.cross_entropy(logits, torch.zeros_like(y))  # uniform sampling: no logQ term


@dataclass
class FitResult:
    best_val: float
    best_epoch: int
    epochs: int
    seconds: float
    history: list
    optimizer: torch.optim.Optimizer | None = None


def fit(model, split: Split, cat: Catalog, cfg: TrainConfig) -> FitResult:
    """Adam with early stopping on validation NDCG@10; the model ends with its best weights."""
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # popularity: nothing to learn
        val = evaluate(model, split.val, cat, seed=cfg.seed)["ndcg@10"]
        return FitResult(val, 0, 0, time.time() - t0, [])
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    target_idx = torch.tensor([event_type_index(t) for t in split.target_types])
    max_len = cfg.max_len or model.max_len
    best, best_epoch, best_state, history = -1.0, 0, None, []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        batches = train_batches(split.train, cfg.batch_size, rng, max_len)
        total = 0.0
        for batch in tqdm(batches, desc=f"epoch {epoch}", disable=not cfg.progress, leave=False):
            loss = sequence_loss(model, batch, cat, cfg, target_idx, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            total += loss.item()
        val = evaluate(model, split.val, cat, seed=cfg.seed)["ndcg@10"]
        history.append(
            dict(
                epoch=epoch,
                loss=total / len(batches),
                val_ndcg10=val,
                seconds=round(time.time() - t0, 1),
            )
        )
        if cfg.progress:
            print(f"epoch {epoch}: loss {total / len(batches):.4f} val NDCG@10 {val:.4f}")
        if val > best:
            best, best_epoch, best_state = val, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            break
    model.load_state_dict(best_state)
    return FitResult(best, best_epoch, epoch, time.time() - t0, history, opt)


def build_baseline(name: str, cat: Catalog, split: Split, d: int = 64) -> nn.Module:
    from model.baselines import GRU4Rec, Popularity, SASRec

    n_warm = int(cat.warm.max())
    if name == "pop":
        return Popularity(len(cat), split.train)
    if name == "gru4rec":
        return GRU4Rec(n_warm, d)
    if name == "sasrec":
        return SASRec(n_warm, d)
    raise ValueError(f"unknown baseline {name!r}; choose pop, gru4rec or sasrec")


# --- command line ---------------------------------------------------------------------------


def add_data_arguments(p: argparse.ArgumentParser, split_from_checkpoint: bool = False) -> None:
    """Options that decide the data, split and training; with split_from_checkpoint the split
    options default to None, to be filled from the checkpoint."""
    unset = split_from_checkpoint
    p.add_argument(
        "--data-format",
        choices=FORMATS,
        default="jsonl",
        help="jsonl (events + items files), movielens, mind or amazon (default jsonl)",
    )
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="jsonl: EVENTS ITEMS; movielens/mind: FOLDER; amazon: REVIEWS META",
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="text encoder: HF name or local folder (default: bundled all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--cache-dir",
        default=os.environ.get("CURRENTS_ENCODER_CACHE", ".cache/item-vectors"),
        help="item vector cache (env CURRENTS_ENCODER_CACHE; default .cache/item-vectors)",
    )
    p.add_argument(
        "--target-types",
        nargs="*",
        default=None if unset else [],
        help="event types that may be prediction targets (default: all)",
    )
    p.add_argument(
        "--holdout-frac",
        type=float,
        default=None if unset else 0.0,
        help="share of items kept out of training, for cold-start figures (default 0)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None if unset else 0,
        help="seed for the split, initialisation and batching (default 0)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    t = TrainConfig()
    p.add_argument("--epochs", type=int, default=t.epochs, help=f"max epochs ({t.epochs})")
    p.add_argument("--batch-size", type=int, default=t.batch_size, help=f"({t.batch_size})")
    p.add_argument("--lr", type=float, default=t.lr, help=f"Adam learning rate ({t.lr})")
    p.add_argument("--weight-decay", type=float, default=t.weight_decay, help="(0)")
    p.add_argument(
        "--patience",
        type=int,
        default=t.patience,
        help=f"early-stopping patience in epochs ({t.patience})",
    )
    p.add_argument(
        "--negatives",
        type=int,
        default=0,
        help="sampled-softmax negatives per batch; 0 = full softmax (default)",
    )
    p.add_argument(
        "--max-len",
        type=int,
        default=None,
        help="train on at most the last N events per user (default: all)",
    )
    m = ModelConfig()
    p.add_argument("--d-model", type=int, default=m.d_model, help=f"width ({m.d_model})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    m = ModelConfig()
    p.add_argument("--out", default="checkpoints/model.pt", help="checkpoint path to write")
    p.add_argument(
        "--before",
        metavar="ISO_TIME",
        help="train only on events before this time (the catalog keeps every item), e.g. to "
        "replay the time after it as unseen history",
    )
    p.add_argument("--window", type=int, default=m.window, help=f"attention window K ({m.window})")
    p.add_argument("--dropout", type=float, default=m.dropout, help=f"({m.dropout})")
    p.add_argument(
        "--id-dropout",
        type=float,
        default=m.id_dropout,
        help=f"chance of dropping an item's id embedding in training ({m.id_dropout})",
    )


def load_catalog(args: argparse.Namespace) -> tuple[list[Event], Catalog]:
    """Load the dataset and encode the catalog's text (cached)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach out for weights mid-run
    events, items = load_dataset(args.data_format, args.data)
    if getattr(args, "before", None):  # train on the past only; replay scores the future
        cutoff = datetime.fromisoformat(args.before.replace("Z", "+00:00"))
        cutoff = cutoff if cutoff.tzinfo else cutoff.replace(tzinfo=UTC)
        events = [e for e in events if e.timestamp < cutoff.timestamp()]
    args.encoder = args.encoder or default_encoder()
    encoder = ItemEncoder(args.encoder, cache_dir=args.cache_dir)
    return events, Catalog.build(events, items, encoder, progress=not args.quiet)


def prepare_data(args: argparse.Namespace) -> tuple[Catalog, Split]:
    """Catalog and leave-one-out split as the data and split options describe."""
    events, cat = load_catalog(args)
    split = build_split(
        events, cat, args.target_types or (), args.holdout_frac or 0.0, args.seed or 0
    )
    return cat, split


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    cat, split = prepare_data(args)
    print(f"data: {split.stats}")
    cfg = ModelConfig(
        n_items=int(cat.warm.max()) + 1,
        text_dim=cat.text.shape[1],
        d_model=args.d_model,
        window=args.window,
        dropout=args.dropout,
        id_dropout=args.id_dropout,
    )
    torch.manual_seed(args.seed)
    model = InterestModel(cfg)
    tcfg = TrainConfig.from_args(args)
    res = fit(Ours(model), split, cat, tcfg)
    test = evaluate(Ours(model), split.test, cat, seed=args.seed)
    item_index = {cat.item_ids[i]: int(w) for i, w in enumerate(cat.warm.tolist()) if w > 0}
    meta = dict(
        data_format=args.data_format,
        split=dict(
            target_types=list(split.target_types), holdout_frac=args.holdout_frac, seed=args.seed
        ),
        train=asdict(tcfg),
        best_val_ndcg10=res.best_val,
        best_epoch=res.best_epoch,
        test=test,
        stats=split.stats,
        train_seconds=round(res.seconds, 1),
    )
    version = save_checkpoint(
        args.out, model, item_index, cat.categories, args.encoder, meta, res.optimizer
    )
    print(f"best epoch {res.best_epoch}: val NDCG@10 {res.best_val:.4f}; test {test}")
    print(f"wrote {args.out} (model version {version})")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train the Currents interest model.")
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
