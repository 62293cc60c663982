"""Quality table: SASRec-CE (and optionally Pop, GRU4Rec) against the interest model, trained and
scored in one run, on one leave-one-out split per seed, with full ranking (model.evaluate).

    python bench/quality.py --data-format movielens --data ../shared/data/ml-100k --seeds 0,1,2
    python bench/quality.py --data-format letter --data ../shared/data/amazon-office --seeds 0,1,2
    python bench/quality.py --data-format mind \\
        --data ../shared/data/mind-small/MINDsmall_train_subset --target-types click

Every model is trained with the same defaults (model.train.TrainConfig, model.config.ModelConfig)
on every dataset: no per-dataset settings. Rows give the mean and the spread (sample standard
deviation) over the seeds; the ratio line is ours / SASRec-CE on NDCG@10, from the means.

--ablations adds "ours-notext" (text vectors zeroed: id embeddings only) and "ours-noid" (id
embeddings zeroed and frozen: text only). With --holdout-frac > 0 (default 0.1) the interest
model is also trained on an item-holdout split (those items never seen in training, seed 0) and
its HR@10 is reported on the test cases whose target is such a cold item and on the warm ones.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.data import FORMATS  # noqa: E402
from model.dataset import Catalog, Split, build_split  # noqa: E402
from model.evaluate import evaluate  # noqa: E402
from model.train import (  # noqa: E402
    DataSpec,
    Ours,
    TrainConfig,
    build_baseline,
    fit,
    load_catalog,
    new_model,
)

MODELS = ("pop", "gru4rec", "sasrec", "ours", "ours-notext", "ours-noid")
METRICS = ("hr@10", "ndcg@10", "hr@20", "ndcg@20")


def build(name: str, cat: Catalog, split: Split) -> torch.nn.Module:
    if not name.startswith("ours"):
        return build_baseline(name, cat, split)
    model = new_model(cat)
    if name == "ours-noid":
        model.id_emb.weight.data.zero_()
        model.id_emb.weight.requires_grad_(False)
    return Ours(model)


def variant_catalog(name: str, cat: Catalog) -> Catalog:
    """The catalog a variant sees: ours-notext gets no text vectors."""
    if name != "ours-notext":
        return cat
    cat = copy.copy(cat)
    cat.text, cat.has_text = torch.zeros_like(cat.text), torch.zeros_like(cat.has_text)
    return cat


def run_model(name: str, cat: Catalog, split: Split, tcfg: TrainConfig) -> dict:
    torch.manual_seed(tcfg.seed)
    cat = variant_catalog(name, cat)
    model = build(name, cat, split)
    t0 = time.time()
    res = fit(model, split, cat, tcfg)
    test = evaluate(model, split.test, cat, seed=tcfg.seed)
    warm_cases = [c for c in split.test if cat.warm[c.target] > 0]
    warm = evaluate(model, warm_cases, cat, seed=tcfg.seed)
    row = dict(
        model=name,
        seed=tcfg.seed,
        val_ndcg10=res.best_val,
        best_epoch=res.best_epoch,
        epochs=res.epochs,
        train_s=round(res.seconds, 1),
        total_s=round(time.time() - t0, 1),
        warm_hr10=warm["hr@10"],
        **test,
    )
    print(json.dumps(row), flush=True)
    return row


def summarise(rows: list[dict]) -> list[dict]:
    """One row per model: mean and spread of each metric over the seeds."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        s = dict(model=name, seeds=len(mine), best_epoch=[r["best_epoch"] for r in mine])
        for key in (*METRICS, "total_s"):
            values = [r[key] for r in mine]
            s[key] = statistics.mean(values)
            s[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(s)
    return out


def table(summary: list[dict]) -> str:
    lines = [
        "| model | seeds | HR@10 | NDCG@10 | HR@20 | NDCG@20 | best epochs | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        cells = " | ".join(f"{s[m]:.4f} ± {s[m + '_sd']:.4f}" for m in METRICS)
        epochs = ", ".join(map(str, s["best_epoch"]))
        lines.append(f"| {s['model']} | {s['seeds']} | {cells} | {epochs} | {s['total_s']:.0f} |")
    return "\n".join(lines)


def code_version() -> dict:
    """Commit and uncommitted changes to the code this benchmark runs (model/, bench/)."""
    root = Path(__file__).resolve().parents[1]

    def git(*cmd: str) -> str:
        out = subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True)
        return out.stdout.strip()

    changed = git("status", "--porcelain", "--", "model", "bench").splitlines()
    return dict(git_sha=git("rev-parse", "--short", "HEAD") or None, uncommitted=changed)


def holdout_run(events, cat: Catalog, args, tcfg: TrainConfig) -> dict:
    """The interest model on an item-holdout split: cold and warm HR@10 of the same model."""
    hold_cat = copy.copy(cat)  # the split sets hold_cat.warm; text is shared
    hold = build_split(events, hold_cat, args.target_types, args.holdout_frac, tcfg.seed)
    print(f"item holdout: {hold.stats}", flush=True)
    row = run_model("ours", hold_cat, hold, tcfg)
    row["cold_to_warm_hr10"] = (row["cold_hr@10"] or 0.0) / max(row["warm_hr10"], 1e-12)
    return dict(split=hold.stats, row=row)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-format", choices=FORMATS, default="movielens")
    p.add_argument("--data", nargs="+", required=True, help="as `currents train --data`")
    p.add_argument("--encoder", default=None, help="text encoder (default: bundled MiniLM)")
    p.add_argument("--cache-dir", default=".cache/item-vectors")
    p.add_argument(
        "--target-types",
        nargs="*",
        default=[],
        help="event types that are prediction targets (default all; MIND: click)",
    )
    p.add_argument("--models", default="sasrec,ours", help=f"comma list from {', '.join(MODELS)}")
    p.add_argument("--ablations", action="store_true", help="add ours-notext and ours-noid")
    p.add_argument("--seeds", default="0", help="comma list of seeds (split, init, batching)")
    p.add_argument(
        "--holdout-frac",
        type=float,
        default=0.1,
        help="item-holdout run of the interest model for cold-start HR (0 = skip)",
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, ...")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="write config, split stats and rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    code = code_version()  # at the start: the tree may change during an hour-long run
    print(f"code: {code}", flush=True)
    models = [m.strip() for m in args.models.split(",")]
    models += ["ours-notext", "ours-noid"] if args.ablations else []
    seeds = [int(s) for s in args.seeds.split(",")]

    spec = DataSpec(args.data_format, tuple(args.data), args.encoder, args.cache_dir)
    spec = replace(spec, progress=False)
    t0 = time.time()
    events, cat = load_catalog(spec)
    prep_s = time.time() - t0
    rows, stats = [], None
    for seed in seeds:
        split = build_split(events, cat, args.target_types, seed=seed)
        stats = split.stats
        print(f"seed {seed} ({prep_s:.0f} s to load): {stats}", flush=True)
        tcfg = TrainConfig(seed=seed, device=args.device, progress=False)
        rows += [run_model(m, cat, split, tcfg) for m in models]
    summary = summarise(rows)
    means = {s["model"]: s["ndcg@10"] for s in summary}
    ratio = means["ours"] / means["sasrec"] if {"ours", "sasrec"} <= means.keys() else None
    hold = None
    if args.holdout_frac > 0:
        hold = holdout_run(events, cat, args, TrainConfig(device=args.device, progress=False))
    print(f"\n{args.data_format} leave-one-out, full ranking, seeds {args.seeds}")
    print(table(summary))
    if ratio is not None:
        print(f"\nours / SASRec-CE NDCG@10: {ratio:.3f}")
    if stats["cold_test_cases"]:
        cold = [r for r in rows if r["model"] == "ours"]
        hrs = ", ".join(f"{r['cold_hr@10']:.4f}" for r in cold)
        n = stats["cold_test_cases"]
        print(f"cold test targets (never in training): {n}, ours HR@10 {hrs}")
    if hold:
        r = hold["row"]
        print(
            f"\nitem holdout ({args.holdout_frac:.0%} of items unseen in training, seed 0): "
            f"cold HR@10 {r['cold_hr@10']:.4f} on {r['cold_cases']} cases, warm HR@10 "
            f"{r['warm_hr10']:.4f}: cold / warm {r['cold_to_warm_hr10']:.2f}"
        )
    total = time.time() - t_start
    print(f"\ntotal wall time {total:.0f} s")
    if args.json:
        out = dict(
            args=vars(args),
            train=asdict(TrainConfig()),
            **code,
            split=stats,
            rows=rows,
            summary=summary,
            ours_to_sasrec_ndcg10=ratio,
            holdout=hold,
            prep_s=round(prep_s, 1),
            total_s=round(total, 1),
        )
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
