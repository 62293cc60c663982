"""Quality table: Pop, GRU4Rec, SASRec-CE and the interest model, trained and scored in one run.

All on one leave-one-out split, with full ranking (model.evaluate).

    python bench/quality.py --data-format movielens --data /path/to/ml-100k --json out.json
    python bench/quality.py --data-format mind --data /path/to/MINDsmall_train --target-types click

With --holdout-frac > 0 it also trains the interest model on an item-holdout split (those items
never seen in training) and reports HR@10 on test cases whose target is such a cold item, and on
those of them whose item has text (a cold item without text has no representation at all). That
run uses more id dropout (--holdout-id-dropout), which trades warm accuracy for cold accuracy.
Variants: "ours-notext" zeroes the text vectors, "ours-notype" turns every event into a click.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.baselines import GRU4Rec, Popularity, SASRec  # noqa: E402
from model.config import ModelConfig, event_type_index  # noqa: E402
from model.data import FORMATS  # noqa: E402
from model.dataset import Catalog, Split, build_split  # noqa: E402
from model.evaluate import evaluate  # noqa: E402
from model.interest import InterestModel  # noqa: E402
from model.train import Ours, TrainConfig, fit, load_catalog  # noqa: E402

MODELS = ("pop", "gru4rec", "sasrec", "ours", "ours-notext", "ours-notype")


def build(name: str, cat: Catalog, split: Split, args) -> torch.nn.Module:
    n_warm = int(cat.warm.max())
    if name == "pop":
        return Popularity(len(cat), split.train)
    if name == "gru4rec":
        return GRU4Rec(n_warm, args.d_model)
    if name == "sasrec":
        return SASRec(n_warm, args.d_model, max_len=200)
    cfg = ModelConfig(
        n_items=n_warm + 1,
        text_dim=cat.text.shape[1],
        d_model=args.d_model,
        window=args.window,
        dropout=args.dropout,
        id_dropout=args.id_dropout,
    )
    return Ours(InterestModel(cfg))


def variant_data(name: str, cat: Catalog, split: Split) -> tuple[Catalog, Split]:
    """The catalog and split a variant sees: text removed, or event types erased."""
    if name == "ours-notext":
        cat = copy.copy(cat)
        cat.text = torch.zeros_like(cat.text)
    if name == "ours-notype":
        split = copy.deepcopy(split)
        click = event_type_index("click")
        for s in split.train + [c.history for c in split.val + split.test]:
            s.types[:] = click
    return cat, split


def run_model(name: str, cat: Catalog, split: Split, args, tcfg: TrainConfig) -> dict:
    torch.manual_seed(args.seed)
    cat, split = variant_data(name, cat, split)
    model = build(name, cat, split, args)
    t0 = time.time()
    cfg = replace(tcfg, lr=args.base_lr) if name in ("gru4rec", "sasrec") else tcfg
    res = fit(model, split, cat, cfg)
    test = evaluate(model, split.test, cat, seed=args.seed)
    # cold targets that have text: the only cold items any model here can represent (MIND: most
    # news ids lack text, so cold HR@10 over all cold targets mostly counts unscorable items)
    cold_text = [c for c in split.test if cat.warm[c.target] == 0 and cat.has_text[c.target]]
    sub = evaluate(model, cold_text, cat, seed=args.seed) if cold_text else {}
    test["cold_text_cases"] = len(cold_text)
    test["cold_text_hr@10"] = sub.get("hr@10")
    test["cold_text_ndcg@10"] = sub.get("ndcg@10")
    row = dict(
        model=name,
        val_ndcg10=res.best_val,
        best_epoch=res.best_epoch,
        epochs=res.epochs,
        train_s=round(res.seconds, 1),
        total_s=round(time.time() - t0, 1),
        **test,
    )
    print(json.dumps(row), flush=True)
    return row


def code_version() -> dict:
    """Commit and uncommitted changes to the code this benchmark runs (model/, bench/)."""
    root = Path(__file__).resolve().parents[1]

    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True)
        return out.stdout.strip()

    changed = git("status", "--porcelain", "--", "model", "bench").splitlines()
    return dict(git_sha=git("rev-parse", "--short", "HEAD") or None, uncommitted=changed)


def table(rows: list[dict], cold: bool = False) -> str:
    head = "| model | HR@10 | NDCG@10 | HR@20 | NDCG@20 | best epoch | wall s |"
    if cold:
        head += " cold cases | cold HR@10 | cold cases with text | their HR@10 |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (
            f"| {r['model']} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | {r['hr@20']:.4f} | "
            f"{r['ndcg@20']:.4f} | {r['best_epoch']} | {r['total_s']:.0f} |"
        )
        if cold:
            hr, hr_text = r["cold_hr@10"], r["cold_text_hr@10"]
            line += f" {r['cold_cases']} | {'n/a' if hr is None else f'{hr:.4f}'} |"
            line += f" {r['cold_text_cases']} | {'n/a' if hr_text is None else f'{hr_text:.4f}'} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-format", choices=FORMATS, default="movielens")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--encoder", default=None, help="text encoder (default: bundled MiniLM)")
    p.add_argument("--cache-dir", default=".cache/item-vectors")
    p.add_argument(
        "--target-types",
        nargs="*",
        default=[],
        help="event types that are prediction targets (default all; MIND: click)",
    )
    p.add_argument(
        "--models", default="pop,gru4rec,sasrec,ours", help=f"comma list from {', '.join(MODELS)}"
    )
    p.add_argument(
        "--holdout-frac",
        type=float,
        default=0.1,
        help="item-holdout run of the interest model for cold-start HR (0 = skip)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=200, help="max epochs (early stopping decides)")
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--negatives", type=int, default=0, help="sampled softmax (0 = full)")
    p.add_argument("--d-model", type=int, default=64, help="width of every model (64)")
    p.add_argument("--lr", type=float, default=5e-3, help="learning rate of the interest model")
    p.add_argument("--base-lr", type=float, default=5e-3, help="learning rate of GRU4Rec/SASRec")
    p.add_argument("--window", type=int, default=ModelConfig().window)
    p.add_argument("--dropout", type=float, default=ModelConfig().dropout)
    p.add_argument("--id-dropout", type=float, default=ModelConfig().id_dropout)
    p.add_argument(
        "--holdout-id-dropout",
        type=float,
        default=0.5,
        help="id dropout of the item-holdout run (0.5; the main table uses --id-dropout)",
    )
    p.add_argument("--json", default=None, help="write config, split stats and rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    code = code_version()  # at the start: the tree may change during an hour-long run
    print(f"code: {code}", flush=True)

    data_args = argparse.Namespace(
        data_format=args.data_format,
        data=args.data,
        encoder=args.encoder,
        cache_dir=args.cache_dir,
        target_types=args.target_types,
        holdout_frac=0.0,
        seed=args.seed,
        quiet=True,
    )
    t0 = time.time()
    events, cat = load_catalog(data_args)
    split = build_split(events, cat, args.target_types, seed=args.seed)
    prep_s = time.time() - t0
    print(f"data ({prep_s:.0f} s): {split.stats}", flush=True)
    tcfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        negatives=args.negatives,
        seed=args.seed,
        progress=False,
    )
    rows = [run_model(m.strip(), cat, split, args, tcfg) for m in args.models.split(",")]
    cold_rows, hold_stats = [], None
    if args.holdout_frac > 0:
        hold_cat = copy.copy(cat)  # the split sets hold_cat.warm; text is shared
        hold = build_split(events, hold_cat, args.target_types, args.holdout_frac, args.seed)
        hold_stats = hold.stats
        print(f"item holdout: {hold_stats}", flush=True)
        hold_args = copy.copy(args)  # more id dropout: the text path must carry cold items
        hold_args.id_dropout = args.holdout_id_dropout
        cold_rows = [run_model("ours", hold_cat, hold, hold_args, tcfg)]
        cold_rows[0]["model"] = f"ours (id dropout {args.holdout_id_dropout})"
    print(f"\n{args.data_format} leave-one-out, full ranking, seed {args.seed}")
    print(table(rows, cold=split.stats["cold_test_cases"] > 0))  # targets seen only in val/test
    if cold_rows:
        print(f"\nitem holdout ({args.holdout_frac:.0%} of items unseen in training)")
        print(table(cold_rows, cold=True))
    total = time.time() - t_start
    print(f"\ntotal wall time {total:.0f} s")
    if args.json:
        out = dict(
            args=vars(args),
            train=asdict(tcfg),
            **code,
            split=split.stats,
            rows=rows,
            holdout_split=hold_stats,
            holdout_rows=cold_rows,
            prep_s=round(prep_s, 1),
            total_s=round(total, 1),
        )
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
