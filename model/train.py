"""Training harness for the interest model and the baselines (`currents train`: model/cli.py).

Harness protocol, shared by every model so that all are trained and scored alike:
`item_matrix(catalog) -> (N+1, d)` item vectors, `encode(batch, mat) -> (B, T, d)` one output
per position, scores = outputs @ item_matrix.T; `id_only` (cannot score cold items) and
`max_len` (last events read; None = all). Position t is trained to predict event t+1.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from model.checkpoint import save_checkpoint
from model.config import ModelConfig, event_type_index
from model.data import Event, load_dataset
from model.dataset import Catalog, SeqBatch, Split, build_split, train_batches
from model.encoder import ItemEncoder, default_encoder
from model.evaluate import evaluate
from model.interest import InterestModel

__all__ = [
    "DataSpec",
    "Ours",
    "TrainConfig",
    "build_baseline",
    "fit",
    "load_catalog",
    "new_model",
    "prepare_data",
    "train",
]


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
    epochs: int = 30  # the learning-rate schedule's length; early stopping may end sooner
    batch_size: int = 32  # users per step: small catalogs of long histories need the steps
    lr: float = 2e-3  # peak AdamW learning rate, after a linear warm-up
    weight_decay: float = 0.05  # on matrices (not biases, norms or embeddings)
    warmup: float = 0.05  # share of the steps spent warming the learning rate up
    patience: int = 6  # epochs without a better validation NDCG@10 before stopping, counted
    # from two thirds of the schedule on: before, the learning rate is still high and a small
    # validation set's noise would stop a model that the decay has yet to settle
    negatives: int = 0  # 0 = softmax over all training items; >0 = sampled softmax
    max_len: int | None = None  # truncate training sequences (None = the model's own max_len)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True


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
    pos = torch.arange(T - 1, device=out.device) < (batch.lengths - 1).unsqueeze(1)  # (B, T-1)
    pos &= torch.isin(batch.types[:, 1:], target_idx)
    h, y = out[pos], batch.items[:, 1:][pos]  # (n, d), (n,)
    if len(y) == 0:  # e.g. only views in this batch when clicks are the targets
        return out.sum() * 0.0
    warm = cat.warm > 0  # training only ever ranks items seen in training
    if cfg.negatives <= 0:
        logits = (h @ mat.T).masked_fill(~warm, float("-inf"))  # (n, N+1)
        return F.cross_entropy(logits, y)
    pool = torch.nonzero(warm).squeeze(1)
    pick = torch.randint(len(pool), (cfg.negatives,), generator=gen).to(pool.device)
    neg = pool[pick]  # shared negatives
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


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on the matrices of linear layers only (as nanoGPT, but embeddings
    are not decayed: a rare item's vector would shrink towards nothing between its updates)."""
    decay, rest = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                is_matrix = p.dim() >= 2 and not isinstance(module, nn.Embedding)
                (decay if is_matrix and name != "lag" else rest).append(p)
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=rest, weight_decay=0)]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to a tenth of it at the last step."""
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def fit(model, split: Split, cat: Catalog, cfg: TrainConfig) -> FitResult:
    """AdamW with a warm-up and cosine schedule, early stopping on validation NDCG@10; the
    model ends with its best weights, on cfg.device."""
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model.to(device)
    cat = cat.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:  # popularity: nothing to learn
        val = evaluate(model, split.val, cat, seed=cfg.seed)["ndcg@10"]
        return FitResult(val, 0, 0, time.time() - t0, [])
    opt = make_optimizer(model, cfg)
    target_idx = torch.tensor([event_type_index(t) for t in split.target_types], device=device)
    max_len = cfg.max_len or model.max_len
    n_batches = -(-len(split.train) // cfg.batch_size)
    total, step = cfg.epochs * n_batches, 0
    best, best_epoch, best_state, history = -1.0, 0, None, []
    epochs = tqdm(range(1, cfg.epochs + 1), desc="training", unit="epoch", disable=not cfg.progress)
    for epoch in epochs:
        model.train()
        batches = train_batches(split.train, cfg.batch_size, rng, max_len)
        total_loss = 0.0
        for batch in batches:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            loss = sequence_loss(model, batch.to(device), cat, cfg, target_idx, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            total_loss += loss.item()
            step += 1
        val = evaluate(model, split.val, cat, seed=cfg.seed)["ndcg@10"]
        loss = total_loss / len(batches)
        history.append(
            dict(epoch=epoch, loss=loss, val_ndcg10=val, seconds=round(time.time() - t0, 1))
        )
        if cfg.progress:
            epochs.write(f"epoch {epoch}: loss {loss:.4f}  val NDCG@10 {val:.4f}")
            epochs.set_postfix(val_ndcg10=f"{val:.4f}", best=f"{max(best, val):.4f}")
        if val > best:
            best, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif epoch - max(best_epoch, 2 * cfg.epochs // 3) >= cfg.patience:
            break
    epochs.close()
    model.load_state_dict(best_state)
    return FitResult(best, best_epoch, epoch, time.time() - t0, history, opt)


def new_model(cat: Catalog, **config) -> InterestModel:
    """A fresh interest model sized for the catalog, its text standardisation fit on the text
    vectors of the items seen in training; `config` overrides ModelConfig's defaults."""
    cfg = ModelConfig(n_items=int(cat.warm.max()) + 1, text_dim=cat.text.shape[1], **config)
    model = InterestModel(cfg)
    model.fit_text_statistics(cat.text[cat.has_text & (cat.warm > 0)])
    return model


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


# --- data and the whole training run, as plain functions ---------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """Where the events and items come from and how they are split."""

    data_format: str
    data: tuple[str, ...]
    encoder: str | None = None  # HF name or folder; None = the bundled MiniLM
    cache_dir: str = ".cache/item-vectors"
    target_types: tuple[str, ...] = ()  # event types that may be targets; empty = all
    holdout_frac: float = 0.0  # share of items kept out of training (cold-start figures)
    seed: int = 0
    before: float | None = None  # Unix seconds: train on earlier events only
    progress: bool = True


def load_catalog(spec: DataSpec) -> tuple[list[Event], Catalog]:
    """Load the dataset and encode the catalog's text (cached)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach out for weights mid-run
    events, items = load_dataset(spec.data_format, list(spec.data))
    if spec.before is not None:  # train on the past only; replay scores the future
        events = [e for e in events if e.timestamp < spec.before]
    encoder = ItemEncoder(spec.encoder or default_encoder(), cache_dir=spec.cache_dir)
    return events, Catalog.build(events, items, encoder, progress=spec.progress)


def prepare_data(spec: DataSpec) -> tuple[Catalog, Split]:
    """Catalog and leave-one-out split as the spec describes."""
    events, cat = load_catalog(spec)
    return cat, build_split(events, cat, spec.target_types, spec.holdout_frac, spec.seed)


def train(spec: DataSpec, out: str | os.PathLike, tcfg: TrainConfig, **config) -> dict:
    """Train the interest model on the spec's data, score it on the test cases and write a
    checkpoint to `out`; `config` overrides ModelConfig's defaults. Returns what it measured."""
    cat, split = prepare_data(spec)
    if tcfg.progress:
        print(f"data: {split.stats}")
    torch.manual_seed(tcfg.seed)
    model = new_model(cat, **config)
    res = fit(Ours(model), split, cat, tcfg)
    test = evaluate(Ours(model), split.test, cat, seed=spec.seed)
    model.cpu()  # a checkpoint serves anywhere: workers pick their own device
    item_index = {cat.item_ids[i]: int(w) for i, w in enumerate(cat.warm.tolist()) if w > 0}
    meta = dict(
        data_format=spec.data_format,
        split=dict(
            target_types=list(split.target_types),
            holdout_frac=spec.holdout_frac,
            seed=spec.seed,
        ),
        train=asdict(tcfg),
        best_val_ndcg10=res.best_val,
        best_epoch=res.best_epoch,
        test=test,
        stats=split.stats,
        train_seconds=round(res.seconds, 1),
    )
    encoder = spec.encoder or default_encoder()
    version = save_checkpoint(out, model, item_index, cat.categories, encoder, meta, res.optimizer)
    return dict(version=version, **meta)
