"""Faithfulness of `because`: do the cited events matter more to a recommendation than others?

    python bench/explain.py [--datasets ml-100k,amazon-office] [--cases 500] [--epochs 8]

Per dataset: train the interest model (model.train, default settings, a short schedule), then
for test cases of its leave-one-out split (the user's history before the held-out event): run
the history through the serving step (model.serving.step_events, as the engine does), take the
top recommendation (the user's last 32 items kept out, as the engine does) and the events
`because` cites for it (stream.engine's rule: the weight of each event of the window, its
attention plus 1 for the newest one's residual path, times how its item scores against the
recommended one). Then remove the cited events
from the history and re-score; separately remove as many other events of the same window
(drawn at random) and re-score. The rank drop is the recommended item's new rank minus 1.
Reports both mean rank drops and the share of cases where removing the cited events dropped the
item further (ties count against). Cases with fewer than twice as many window events as cited
are skipped (there would be no others to remove).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.serving import step_events  # noqa: E402
from model.train import DataSpec, Ours, TrainConfig, fit, new_model, prepare_data  # noqa: E402
from schemas.outputs import MAX_REASONS  # noqa: E402
from stream.records import RECENT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data"
DATASETS = {"ml-100k": ("movielens", ["ml-100k"]), "amazon-office": ("letter", ["amazon-office"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding the datasets")
    parser.add_argument("--cases", type=int, default=500, help="test cases per dataset")
    parser.add_argument("--epochs", type=int, default=8, help="training schedule, in epochs")
    parser.add_argument(
        "--cache", default=os.environ.get("CURRENTS_ENCODER_CACHE", ".cache/item-vectors")
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.datasets.split(","):
        fmt, paths = DATASETS[name]
        spec = DataSpec(fmt, tuple(str(args.data / p) for p in paths), cache_dir=args.cache)
        spec = DataSpec(**{**spec.__dict__, "progress": False})
        started = time.time()
        cat, split = prepare_data(spec)
        torch.manual_seed(0)
        model = new_model(cat)
        fit(Ours(model), split, cat, TrainConfig(epochs=args.epochs, progress=False))
        model.eval()
        trained = time.time() - started
        rng = np.random.default_rng(0)
        picked = rng.choice(len(split.test), min(args.cases, len(split.test)), replace=False)
        result = faithfulness(model, cat, [split.test[i].history for i in picked], rng)
        print(
            f"{name}: {result['cases']} recommendations of {result['users']} users "
            f"({result['skipped']} with one event skipped); mean rank drop: cited removed "
            f"{result['cited']:.1f}, as many others removed {result['others']:.1f}; "
            f"cited drop it further in {result['share']:.1%} "
            f"(equal drops {result['ties']:.1%}; further, or as far and its score falls more: "
            f"{result['share_by_score']:.1%}) (train {trained:.0f} s, {args.epochs} epochs)",
            flush=True,
        )


@torch.no_grad()
def faithfulness(model, cat, histories, rng, top_n: int = 10) -> dict:
    reps = model.item_representations(cat.text, cat.warm)
    K = model.cfg.window
    full = [np.arange(len(h.items)) for h in histories]
    interest, attention = run(model, reps, histories, full)
    excluded = [h.items[-RECENT:] for h in histories]
    scores = ranked(interest, reps, excluded)
    top = scores.topk(top_n, dim=1).indices  # (B, n) what an update recommends
    pairs, cited_sets, other_sets = [], [], []  # (case, rank - 1) with what each removes
    for b, history in enumerate(histories):
        n = len(history.items)
        slots = np.arange(max(0, n - K), n)  # events of the window, oldest first
        weights = attention[b, K - len(slots) :].clone()
        weights[-1] += 1.0  # the newest event's slot, also through the residual (stream.engine)
        removed = min(MAX_REASONS, len(slots) // 2)  # as many others must be left to remove
        if removed == 0:
            continue
        for r, item in enumerate(top[b].tolist()):
            support = (weights * (reps[history.items[slots]] @ reps[item])).numpy()
            cited = slots[np.argsort(-support, kind="stable")[:removed]]
            pairs.append((b, r))
            cited_sets.append(cited)
            other_sets.append(rng.choice(np.setdiff1d(slots, cited), removed, replace=False))
    case = np.array([b for b, _ in pairs])
    rank = torch.tensor([r for _, r in pairs])
    item = top[torch.from_numpy(case), rank]
    before = scores[torch.from_numpy(case), item]
    drops, falls = {}, {}
    for name, removed in (("cited", cited_sets), ("others", other_sets)):
        keep = [
            np.setdiff1d(np.arange(len(histories[b].items)), r)
            for b, r in zip(case, removed, strict=True)
        ]
        after, _ = run(model, reps, [histories[b] for b in case], keep)
        new_scores = ranked(after, reps, [excluded[b] for b in case])
        target = new_scores[torch.arange(len(case)), item]
        drops[name] = ((new_scores > target.unsqueeze(1)).sum(1) - rank).numpy()
        falls[name] = (before - target).numpy()  # how much its score fell
    further = drops["cited"] > drops["others"]
    tied = drops["cited"] == drops["others"]
    return {
        "users": len(set(case.tolist())),
        "cases": len(case),
        "skipped": len(histories) - len(set(case.tolist())),
        "cited": float(drops["cited"].mean()),
        "others": float(drops["others"].mean()),
        "share": float(further.mean()),
        "ties": float(tied.mean()),
        # equal rank drops told apart by how far the item's score fell
        "share_by_score": float((further | (tied & (falls["cited"] > falls["others"]))).mean()),
    }


def run(model, reps, histories, keep) -> tuple[torch.Tensor, torch.Tensor]:
    """Each history's events at positions `keep`, from a fresh state, through the serving
    step: the interest after the last one (B, d) and its attention over its window (B, K)."""
    items = np.concatenate([h.items[k] for h, k in zip(histories, keep, strict=True)])
    types = np.concatenate([h.types[k] for h, k in zip(histories, keep, strict=True)])
    ts = np.concatenate([h.ts[k] for h, k in zip(histories, keep, strict=True)])
    lengths = np.array([len(k) for k in keep])
    user_row = torch.from_numpy(np.repeat(np.arange(len(keep)), lengths))
    _, out = step_events(
        model,
        model.fresh_state(len(keep)),
        user_row,
        reps[torch.from_numpy(items)],
        torch.from_numpy(types),
        torch.from_numpy(ts).double(),
    )
    last = torch.from_numpy(np.cumsum(lengths) - 1)
    return out.interest[last], out.attention[last]


def ranked(interest, reps, excluded) -> torch.Tensor:
    """Scores of every item (B, N+1), with the padding row and each user's excluded items at
    -inf: the same items stay out before and after a removal, so ranks compare."""
    scores = interest @ reps.T
    scores[:, 0] = -torch.inf
    scores[:, reps.abs().sum(1) == 0] = -torch.inf  # no id vector, no text: not an item
    for b, items in enumerate(excluded):
        scores[b, torch.from_numpy(items)] = -torch.inf
    return scores


if __name__ == "__main__":
    main()
