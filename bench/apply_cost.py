"""In-process cost of `Engine.apply` per event, on ml-100k in time order, without Kafka.

    python bench/apply_cost.py [--data ../shared/data/ml-100k] [--events 6144] [--threads 1]
                               [--sizes 16,64,256,1024] [--rounds 4]

Batches are consecutive events of one events partition (users hashed to 8 partitions), as a
worker working through a backlog sees them; ml-100k users rate in bursts, so one user often
has a long run in a batch. For each batch size it reports the padded user-by-run grid
against the events (what `step_events` would compute if it ran on the grid) and the cost per
event of the three engine modes: live (one update per user and batch), coalesced (the same,
with prequential ranks: `currents replay --coalesce`) and per-event (`currents replay`), each
with and without explanations (`because` on every recommendation; the ratio in brackets).
Weights are untrained, item text vectors random: cost does not depend on them.
"""

import argparse
import gc
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from throughput import untrained_checkpoint

from model.checkpoint import load_checkpoint
from model.data import load_movielens
from stream.engine import Engine
from stream.items import ItemMatrix, ItemVector
from stream.produce import to_behavior_event

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "live": {},
    "coalesced": {"prequential": True},
    "per-event": {"per_event": True, "prequential": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ml-100k"))
    parser.add_argument("--events", type=int, default=6144, help="events of the partition used")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--sizes",
        default="16,64,256,1024",
        help="batch sizes: small ones are a live worker's "
        "under a moderate load, large ones a backlog's",
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternations of each mode with and without because"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    torch.set_num_threads(args.threads)

    events, items = load_movielens(args.data)
    events = [to_behavior_event(e) for e in sorted(events, key=lambda e: e.timestamp)]
    stream = [e for e in events if zlib.crc32(e.user_id.encode()) % 8 == 0][: args.events]
    engine_of = engines(list(items.values()))
    # As the worker does once it is ready: otherwise each full collection would scan the
    # 100,000 parsed ratings, a cost of this script, not of the engine.
    gc.collect()
    gc.freeze()
    for size in map(int, args.sizes.split(",")):
        batches = [stream[i : i + size] for i in range(0, len(stream), size)]
        grid = sum(
            len(c) * max(c.values()) for c in (Counter(e.user_id for e in b) for b in batches)
        )
        line = f"batch {size}: padded grid {grid / len(stream):.1f}x the events;"
        for mode, (explained, plain) in engine_of.items():
            # alternated, so a drift of the machine's speed weighs on both alike; the best of
            # each, as the machine's other work only ever adds time
            with_because = without = float("inf")
            for _ in range(args.rounds):
                with_because = min(with_because, cost_per_event(explained, batches))
                without = min(without, cost_per_event(plain, batches))
            line += (
                f" {mode} {with_because * 1e6:.0f} us/event ({without * 1e6:.0f} without because:"
                f" {with_because / without:.2f}x),"
            )
        print(line.rstrip(","), flush=True)


def engines(catalog) -> dict[str, tuple[Engine, Engine]]:
    """Per mode, its engine with explanations and without."""
    rng = np.random.default_rng(0)
    path = Path(tempfile.mkdtemp(prefix="currents-apply-")) / "model.pt"
    checkpoint = load_checkpoint(untrained_checkpoint(path, catalog))
    encoder = checkpoint.encoder_name
    matrix = ItemMatrix(checkpoint.model.item_representations, checkpoint.item_index, encoder)
    matrix.upsert(
        [
            ItemVector(
                item.item_id,
                rng.normal(size=384).astype("f4"),
                bytes(32),
                encoder,
                item.title,
                item.categories,
            )  # fmt: skip
            for item in catalog
        ]
    )
    return {
        mode: (
            Engine(checkpoint, matrix, **options),
            Engine(checkpoint, matrix, **options, explain=False),
        )
        for mode, options in MODES.items()
    }


def cost_per_event(engine: Engine, batches, repeats: int = 3) -> float:
    """Seconds per event of `engine.apply` over `batches`, states carried between them: the
    best of `repeats` passes after one untimed pass (first calls allocate and warm caches)."""
    admitted, offset = [], 0
    for batch in batches:
        admitted.append([])
        for event in batch:
            value = event.model_dump_json().encode()
            admitted[-1].append(engine.admit(event.user_id.encode(), value, 0, offset, time.time()))
            offset += 1
    passes = []
    for _ in range(repeats + 1):
        stored, spent = {}, 0.0
        for batch in admitted:
            started = time.perf_counter()
            outcomes = engine.apply(stored, batch)
            spent += time.perf_counter() - started
            stored.update((o.user_id, o.record) for o in outcomes)
        passes.append(spent / offset)
    return min(passes[1:])


if __name__ == "__main__":
    main()
