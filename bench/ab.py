"""Two source trees, alternating on one broker: bench/throughput.py and bench/replay.py rates.

    python bench/ab.py OLD_TREE NEW_TREE --checkpoint PATH [--rounds 2] [--new-first] [--out DIR]

Each tree runs its own bench scripts with its own Python (TREE/.venv/bin/python, where the tree
is installed), so its workers run its code. One broker serves every run (started here, or the
one in KAFKA_BOOTSTRAP); between runs every topic and consumer group is deleted, as the scripts
use fixed names. A round is throughput on OLD, then on NEW, then replay on OLD, then on NEW (NEW
first with --new-first: run both orders, the later run may find a warmer broker or a slower
host); each run writes its JSON to --out. The host's speed drifts within minutes: compare the
two trees within a round, and rounds with each other for the noise.

It deletes every topic and consumer group of the cluster: never point KAFKA_BOOTSTRAP at a
shared one.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stream.connection import Cluster
from stream.local_kafka import LocalKafka
from stream.settings import Settings

FIGURES = {
    "throughput": ["engine_events_per_s", "passthrough_events_per_s", "ratio"],
    "replay": ["live_events_per_s", "replay_events_per_s", "coalesced_replay_events_per_s"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, type=Path, metavar="TREE", help="old, then new")
    parser.add_argument("--checkpoint", type=Path, required=True, help="for bench/replay.py")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--new-first", action="store_true", help="NEW before OLD in each pair")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="currents-ab-")))
    parser.add_argument(
        "--throughput-args",
        default="--broker-warmup-seconds 10 --warmup-seconds 3 --latency-seconds 10",
        help="(default: shorter latency phases; their rates are not compared here)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    kafka, cluster = None, Settings.from_env().cluster  # KAFKA_BOOTSTRAP, CURRENTS_KAFKA_*
    if not os.environ.get("KAFKA_BOOTSTRAP"):
        kafka = LocalKafka(args.out / "kafka", partitions=8, heap="1g")
        kafka.start()
        cluster = kafka.cluster
    results: dict[str, list[dict]] = {}
    try:
        for number in range(args.rounds):
            for bench in ("throughput", "replay"):
                pairs = list(zip(("old", "new"), args.trees, strict=True))
                for label, tree in reversed(pairs) if args.new_first else pairs:
                    name = f"{bench}-{label}-{number + 1}"
                    figures = run(tree.resolve(), bench, args, cluster.bootstrap, args.out / name)
                    results.setdefault(f"{bench}-{label}", []).append(figures)
                    print(f"{name}: {figures}", flush=True)
                    clean(cluster)
    finally:
        if kafka is not None:
            kafka.stop()
    summary = {
        key: {f: [r[f] for r in runs] for f in FIGURES[key.split("-")[0]]}
        for key, runs in results.items()
    }
    for bench, figures in FIGURES.items():
        for figure in figures:
            old, new = summary[f"{bench}-old"][figure], summary[f"{bench}-new"][figure]
            digits = 0 if figure.endswith("_per_s") else 2
            ratios = [n / o for o, n in zip(old, new, strict=True)]
            print(
                f"{bench} {figure}: old {_list(old, digits)}, new {_list(new, digits)}; new / old "
                f"per round "
                f"{_list(ratios, 2)} (median {statistics.median(ratios):.2f})"
            )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def run(tree: Path, bench: str, args, bootstrap: str, out: Path) -> dict:
    """One bench script of `tree`, with `tree`'s Python; the figures compared."""
    python = tree / ".venv/bin/python"
    options = args.throughput_args.split() if bench == "throughput" else [
        "--checkpoint", str(args.checkpoint), "--report", str(out) + "-report",
    ]  # fmt: skip
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "PATH": f"{python.parent}:{os.environ['PATH']}",
    }
    command = [str(python), str(tree / f"bench/{bench}.py"), *options, "--json", f"{out}.json"]
    with open(f"{out}.log", "w") as log:
        subprocess.run(command, env=env, cwd=args.out, stdout=log, stderr=subprocess.STDOUT,
                       check=True)  # fmt: skip
    measured = json.loads(Path(f"{out}.json").read_text())
    return {figure: measured[figure] for figure in FIGURES[bench]}


def clean(cluster: Cluster) -> None:
    """Delete every topic and consumer group, and wait until the topics are gone."""
    admin = cluster.admin()
    try:
        groups = [g["group_id"] if isinstance(g, dict) else g[0] for g in admin.list_groups()]
        if groups:
            admin.delete_groups(groups)
        topics = [t for t in admin.list_topics() if not t.startswith("__")]
        if topics:
            admin.delete_topics(topics)
        deadline = time.monotonic() + 60
        while any(not t.startswith("__") for t in admin.list_topics()):
            if time.monotonic() > deadline:
                sys.exit("topics not deleted within 60 s")
            time.sleep(1)
    finally:
        admin.close()


def _list(values: list[float], digits: int = 0) -> str:
    return ", ".join(f"{v:,.{digits}f}" for v in values)


if __name__ == "__main__":
    main()
