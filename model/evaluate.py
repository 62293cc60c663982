"""Full-ranking evaluation of any model of the training harness (`currents evaluate`: model/cli.py).

Every catalog item is a candidate (no sampled negatives), except items a model cannot represent:
cold items for id-only models, and cold items without text for the interest model. Items
already in the user's history are excluded, except the target itself. Ties are broken
uniformly at random with a seeded generator, so a run is repeatable and constant scores
(e.g. popularity ties) are not flattered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model.dataset import Case, Catalog, eval_batch

__all__ = ["evaluate"]


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
    device = next(iter(model.parameters()), cat.text).device
    cat = cat.to(device)
    mat = model.item_matrix(cat)  # (N+1, d)
    cold = cat.warm == 0  # (N+1,)
    # an item with neither an id vector nor text has no representation: never a candidate
    unscorable = cold if model.id_only else cold & ~cat.has_text
    order = sorted(range(len(cases)), key=lambda i: len(cases[i].history.items))
    ranks, is_cold = np.zeros(len(cases)), np.zeros(len(cases), dtype=bool)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        chunk = [cases[i] for i in idx]
        batch = eval_batch(chunk, model.max_len).to(device)
        out = model.encode(batch, mat)  # (B, T, d)
        user = out[torch.arange(len(chunk), device=device), batch.lengths - 1]  # (B, d)
        scores = user @ mat.T  # (B, N+1)
        scores[:, 0] = float("-inf")
        scores[:, unscorable] = float("-inf")
        hist_rows = np.repeat(np.arange(len(chunk)), [len(c.history.items) for c in chunk])
        hist_items = np.concatenate([c.history.items for c in chunk])
        seen = torch.zeros_like(scores, dtype=torch.bool)
        seen[torch.from_numpy(hist_rows).to(device), torch.from_numpy(hist_items).to(device)] = True
        rows = torch.arange(len(chunk), device=device)
        seen[rows, batch.targets] = False
        scores[seen] = float("-inf")
        t = scores[rows, batch.targets].unsqueeze(1)  # (B, 1)
        greater = (scores > t).sum(1).cpu()
        ties = (scores == t).sum(1).cpu() - 1
        rank = (greater + (torch.rand(len(chunk), generator=g) * (ties + 1)).floor()).double()
        rank[t.squeeze(1).cpu() == float("-inf")] = float("inf")  # an unscorable target: a miss
        ranks[idx] = rank.numpy()
        is_cold[idx] = cold[batch.targets].cpu().numpy()
    res = {"cases": len(cases), "cold_cases": int(is_cold.sum())}
    for name, sel in (("", slice(None)), ("cold_", is_cold)):
        r = ranks[sel]
        for k in ks:
            gain = np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)
            res[f"{name}hr@{k}"] = float((r < k).mean()) if len(r) else None
            res[f"{name}ndcg@{k}"] = float(gain.mean()) if len(r) else None
    return res
