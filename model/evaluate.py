"""Full-ranking evaluation, and the `currents evaluate` command.

Every catalog item is a candidate (no sampled negatives), except items a model cannot represent:
cold items for id-only models, and cold items without text for the interest model. Items
already in the user's history are excluded, except the target itself. Ties are broken
uniformly at random with a seeded generator, so a run is repeatable and constant scores
(e.g. popularity ties) are not flattered.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
import torch

from model.dataset import Case, Catalog, eval_batch

__all__ = ["add_arguments", "evaluate", "run"]


@torch.no_grad()
def evaluate(
    model,
    cases: Sequence[Case],
    cat: Catalog,
    ks: Sequence[int] = (10, 20),
    seed: int = 0,
    batch_size: int = 128,
) -> dict:
    """HR@k and NDCG@k over cases, overall and for cold targets (items unseen in training;
    None when there are none). `model` follows the harness protocol of model.train. Serves
    validation and test alike."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    mat = model.item_matrix(cat)  # (N+1, d)
    cold = cat.warm == 0  # (N+1,)
    # an item with neither an id vector nor text has no representation: never a candidate
    unscorable = cold if model.id_only else cold & ~cat.has_text
    order = sorted(range(len(cases)), key=lambda i: len(cases[i].history.items))
    ranks, is_cold = np.zeros(len(cases)), np.zeros(len(cases), dtype=bool)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        chunk = [cases[i] for i in idx]
        batch = eval_batch(chunk, model.max_len)
        out = model.encode(batch, mat)  # (B, T, d)
        user = out[torch.arange(len(chunk)), batch.lengths - 1]  # (B, d)
        scores = user @ mat.T  # (B, N+1)
        scores[:, 0] = float("-inf")
        scores[:, unscorable] = float("-inf")
        seen = torch.zeros_like(scores, dtype=torch.bool)
        for b, c in enumerate(chunk):
            seen[b, torch.from_numpy(c.history.items)] = True
        rows = torch.arange(len(chunk))
        seen[rows, batch.targets] = False
        scores[seen] = float("-inf")
        t = scores[rows, batch.targets].unsqueeze(1)  # (B, 1)
        greater = (scores > t).sum(1)
        ties = (scores == t).sum(1) - 1
        rank = greater + (torch.rand(len(chunk), generator=g) * (ties + 1)).floor()
        rank[t.squeeze(1) == float("-inf")] = float("inf")  # an unscorable target is a miss
        ranks[idx] = rank.numpy()
        is_cold[idx] = cold[batch.targets].numpy()
    res = {"cases": len(cases), "cold_cases": int(is_cold.sum())}
    for name, sel in (("", slice(None)), ("cold_", is_cold)):
        r = ranks[sel]
        for k in ks:
            gain = np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)
            res[f"{name}hr@{k}"] = float((r < k).mean()) if len(r) else None
            res[f"{name}ndcg@{k}"] = float(gain.mean()) if len(r) else None
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    from model.train import add_data_arguments

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


def run(args: argparse.Namespace) -> int:
    from model.checkpoint import load_checkpoint
    from model.train import Ours, TrainConfig, build_baseline, fit, prepare_data

    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    split_cfg = ckpt.meta.get("split", {})
    for key in ("target_types", "holdout_frac", "seed"):
        if getattr(args, key) is None:
            setattr(args, key, split_cfg.get(key))
    args.encoder = ckpt.encoder_name
    cat, split = prepare_data(args)
    cat.warm = ckpt.warm_indices(cat.item_ids)  # warm = what this checkpoint was trained on
    cat.warm[0] = 0
    cases = split.test if args.split == "test" else split.val
    results = {}
    t0 = time.time()
    results["ours"] = evaluate(Ours(ckpt.model), cases, cat, seed=args.seed)
    results["ours"]["eval_s"] = round(time.time() - t0, 1)
    tcfg = TrainConfig.from_args(args)
    for name in filter(None, (s.strip() for s in args.compare.split(","))):
        t0 = time.time()
        model = build_baseline(name, cat, split, args.d_model)
        fit(model, split, cat, tcfg)
        results[name] = evaluate(model, cases, cat, seed=args.seed)
        results[name]["train_eval_s"] = round(time.time() - t0, 1)
    print(json.dumps({"split": split.stats, "results": results}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": split.stats, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
