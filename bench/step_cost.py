"""Per-event cost on CPU: a streaming `step` of the interest model against a SASRec forward.

One `step` (one event per user row) against SASRec re-running its forward pass over each user's
whole history, for a batch of users.

    python bench/step_cost.py [--batch 256] [--lengths 50 200 1000] [--json out.json]

Weights are random (cost does not depend on them). Each measurement runs `--warmup` calls,
then `--repeats` timed calls, and reports the median as microseconds per event (per user row).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.baselines import SASRec  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.dataset import SeqBatch  # noqa: E402
from model.interest import InterestModel  # noqa: E402
from model.state import decode_states, encode_states  # noqa: E402


def timed(fn, warmup: int, repeats: int) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def measure(ours: InterestModel, sasrec: SASRec, L: int, args) -> dict:
    """Seconds per event for users L events into their history."""
    B, d, K = args.batch, args.d_model, args.window
    item_vecs, types = torch.randn(B, d), torch.ones(B, dtype=torch.long)
    ts = torch.full((B,), 1.7e9 + 60, dtype=torch.float64)
    state = ours.fresh_state(B)
    state.count[:] = L  # a user L events in: a full ring, the same work whatever L is
    state.last_ts[:] = 1.7e9
    state.ring.copy_(torch.randn(B, K, d))
    blobs = encode_states(state, "bench")

    def step():
        ours.step(state, item_vecs, types, ts)

    def step_with_bytes():  # what a worker does per batch: decode, step, encode
        new, _ = ours.step(decode_states(blobs, "bench", d, K), item_vecs, types, ts)
        encode_states(new, "bench")

    history = SeqBatch(
        torch.randint(1, args.n_items + 1, (B, L)),
        torch.ones(B, L, dtype=torch.long),
        torch.zeros(B, L, dtype=torch.float64),
        torch.full((B,), L),
    )

    def sasrec_forward():  # SASRec has no state: it re-reads the whole history per event
        sasrec.encode(history, sasrec.emb.weight)[:, -1]

    us = 1e6 / B
    row = dict(
        history=L,
        ours_step_us=timed(step, args.warmup, args.repeats) * us,
        ours_step_with_bytes_us=timed(step_with_bytes, args.warmup, args.repeats) * us,
        sasrec_us=timed(sasrec_forward, max(1, args.warmup // 2), max(3, args.repeats // 4)) * us,
    )
    row["sasrec_over_ours"] = row["sasrec_us"] / row["ours_step_us"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256, help="users per call (256)")
    p.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[50, 200, 1000],
        help="history lengths (50 200 1000)",
    )
    p.add_argument("--d-model", type=int, default=64, help="width of both models (64)")
    p.add_argument("--window", type=int, default=ModelConfig().window, help="our attention window")
    p.add_argument("--n-items", type=int, default=1682, help="item vocabulary of SASRec (1682)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (5; SASRec: half)")
    p.add_argument(
        "--repeats", type=int, default=20, help="timed calls, median kept (20; SASRec: a quarter)"
    )
    p.add_argument("--json", default=None, help="write results to this file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = args.d_model

    ours = InterestModel(ModelConfig(n_items=args.n_items + 1, d_model=d, window=args.window))
    ours.eval()
    sasrec = SASRec(args.n_items, d, max_len=max(args.lengths)).eval()
    rows = []
    for L in args.lengths:
        row = measure(ours, sasrec, L, args)
        rows.append(row)
        print(
            f"L={L:5d}  ours step {row['ours_step_us']:8.1f} us/event  "
            f"(with state bytes {row['ours_step_with_bytes_us']:8.1f})  "
            f"SASRec forward {row['sasrec_us']:10.1f} us/event  "
            f"ratio {row['sasrec_over_ours']:.0f}x",
            flush=True,
        )
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    out = dict(
        config=vars(args), git_sha=sha.stdout.strip() or None, rows=rows, torch=torch.__version__
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
