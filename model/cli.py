"""`currents train` and `currents evaluate`: argument parsing around model.train and
model.evaluate, which are plain functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields, replace
from datetime import UTC, datetime

import torch

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.data import FORMATS
from model.evaluate import evaluate
from model.train import DataSpec, Ours, TrainConfig, build_baseline, fit, prepare_data, train

__all__ = ["EVALUATE_HELP", "TRAIN_HELP", "add_evaluate_arguments", "add_train_arguments"]

TRAIN_HELP = """Train the interest model on an event log and write a checkpoint.

Leave-one-out split (each user's last target event is the test case, the one before it
validation), AdamW with a warm-up and cosine schedule, early stopping on validation NDCG@10.
The same defaults serve every catalog. A progress bar shows the epochs left and an ETA; each
epoch's validation NDCG@10 is printed (--quiet: neither)."""

EVALUATE_HELP = """Full-ranking HR/NDCG of a checkpoint on its split, and of baselines trained on
the same split (--compare pop,gru4rec,sasrec)."""


def add_data_arguments(p: argparse.ArgumentParser, split_from_checkpoint: bool = False) -> None:
    """Options that decide the data, split and training; with split_from_checkpoint the split
    options default to None, to be filled from the checkpoint."""
    unset = split_from_checkpoint
    p.add_argument(
        "--data-format",
        choices=FORMATS,
        default="jsonl",
        help="jsonl (events + items files), movielens, mind, amazon (reviews + metadata) or "
        "letter (LETTER/TIGER-style <name>.inter.json + <name>.item.json) (default jsonl)",
    )
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="jsonl: EVENTS ITEMS; movielens/mind/letter: FOLDER; amazon: REVIEWS META",
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
    p.add_argument(
        "--device", default="cpu", help="torch device to train and score on: cpu, cuda, cuda:1"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    t = TrainConfig()
    p.add_argument(
        "--epochs",
        type=int,
        default=t.epochs,
        help=f"epochs of the learning-rate schedule; early stopping may end sooner ({t.epochs})",
    )
    p.add_argument("--batch-size", type=int, default=t.batch_size, help=f"({t.batch_size})")
    p.add_argument("--lr", type=float, default=t.lr, help=f"peak AdamW learning rate ({t.lr})")
    p.add_argument("--weight-decay", type=float, default=t.weight_decay, help=f"({t.weight_decay})")
    p.add_argument(
        "--patience",
        type=int,
        default=t.patience,
        help="epochs without a better validation NDCG@10 before stopping, counted from two "
        f"thirds of the schedule on ({t.patience})",
    )
    p.add_argument(
        "--negatives",
        type=int,
        default=t.negatives,
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


def add_train_arguments(p: argparse.ArgumentParser) -> None:
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


def data_spec(args: argparse.Namespace) -> DataSpec:
    before = None
    if getattr(args, "before", None):
        cutoff = datetime.fromisoformat(args.before.replace("Z", "+00:00"))
        before = (cutoff if cutoff.tzinfo else cutoff.replace(tzinfo=UTC)).timestamp()
    return DataSpec(
        data_format=args.data_format,
        data=tuple(args.data),
        encoder=args.encoder,
        cache_dir=args.cache_dir,
        target_types=tuple(args.target_types or ()),
        holdout_frac=args.holdout_frac or 0.0,
        seed=args.seed or 0,
        before=before,
        progress=not args.quiet,
    )


def train_config(args: argparse.Namespace) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)} - {"progress", "seed"}
    given = {n: getattr(args, n) for n in names if hasattr(args, n)}
    return TrainConfig(**given, seed=args.seed or 0, progress=not args.quiet)


def run_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    result = train(
        data_spec(args),
        args.out,
        train_config(args),
        d_model=args.d_model,
        window=args.window,
        dropout=args.dropout,
        id_dropout=args.id_dropout,
    )
    print(
        f"best epoch {result['best_epoch']}: val NDCG@10 {result['best_val_ndcg10']:.4f}; "
        f"test {result['test']}"
    )
    print(f"wrote {args.out} (model version {result['version']})")
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `currents train`")
    add_data_arguments(p, split_from_checkpoint=True)
    p.add_argument(
        "--split",
        choices=("val", "test"),
        default="test",
        help="which leave-one-out cases to score (default test)",
    )
    p.add_argument(
        "--compare",
        default="",
        help="comma list of baselines to train and score on the same split: "
        "pop,gru4rec,sasrec (uses the --epochs/--lr/... training options)",
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")


def run_evaluate(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    split_cfg = ckpt.meta.get("split", {})
    for key in ("target_types", "holdout_frac", "seed"):
        if getattr(args, key) is None:
            setattr(args, key, split_cfg.get(key))
    spec = replace(data_spec(args), encoder=ckpt.encoder_name)
    cat, split = prepare_data(spec)
    cat.warm = ckpt.warm_indices(cat.item_ids)  # warm = what this checkpoint was trained on
    cat.warm[0] = 0
    cases = split.test if args.split == "test" else split.val
    tcfg = train_config(args)
    results = {}
    t0 = time.time()
    results["ours"] = evaluate(Ours(ckpt.model.to(tcfg.device)), cases, cat, seed=spec.seed)
    results["ours"]["eval_s"] = round(time.time() - t0, 1)
    for name in filter(None, (s.strip() for s in args.compare.split(","))):
        t0 = time.time()
        model = build_baseline(name, cat, split, args.d_model)
        fit(model, split, cat, tcfg)
        results[name] = evaluate(model, cases, cat, seed=spec.seed)
        results[name]["train_eval_s"] = round(time.time() - t0, 1)
    print(json.dumps({"split": split.stats, "results": results}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": split.stats, "results": results}, f, indent=2)
    return 0


COMMANDS = {
    "train": (TRAIN_HELP, add_train_arguments, run_train),
    "evaluate": (EVALUATE_HELP, add_evaluate_arguments, run_evaluate),
}


def main(argv: list[str] | None = None) -> int:
    """`python -m model.cli train|evaluate ...`, the same as `currents train|evaluate ...`."""
    parser = argparse.ArgumentParser(prog="python -m model.cli")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (text, add, run) in COMMANDS.items():
        command = commands.add_parser(
            name,
            help=text.splitlines()[0],
            description=text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add(command)
        command.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
