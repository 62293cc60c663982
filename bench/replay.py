"""Replay against live on the same history, in one run: rates, and the prequential report.

    python bench/replay.py --checkpoint PATH [--report docs/replay-ml100k] [--window week]
                           [--rounds 1]

The ml-100k ratings go into a fresh topic in timestamp order. (a) A live worker (batches of
up to 1024) works through them as a backlog; (b) `currents replay` (the same, one update per
event with its prequential rank) re-scores the same topic from the beginning, and (c) so does
`currents replay --coalesce` (one update per user and batch, as live, each event ranked). The
rates come from the Kafka timestamps of the first and last outputs, read after the run, so
measuring costs the run nothing. Wall times include each replay's start. The report (JSON + PNG)
goes to --report; with a checkpoint trained `--before` some time, the weeks after it are
history the model never saw. With --rounds N, (a), (b) and (c) run N times, alternating (each
round a new consumer group and namespaces): the host's speed drifts by tens of percent within
minutes, so a ratio is taken within each round and the median over the rounds is reported.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from throughput import cpu_times, git_sha, machine, produce, ready, steal_share

from model.data import load_movielens
from stream.connection import Cluster
from stream.local_kafka import LocalKafka, free_port
from stream.processes import spawn_worker, terminate
from stream.produce import to_behavior_event, to_item_upsert
from stream.settings import Settings
from stream.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ml-100k"))
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--report", type=Path, default=ROOT / "docs/replay-ml100k")
    parser.add_argument("--window", default="week", choices=("hour", "day", "week"))
    parser.add_argument("--rounds", type=int, default=1, help="(a), (b), (c) alternating (1)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.checkpoint, args.report = args.checkpoint.resolve(), args.report.resolve()

    started = cpu_times()
    work = Path(tempfile.mkdtemp(prefix="currents-bench-replay-"))
    events, items = load_movielens(args.data)
    events = sorted((to_behavior_event(e) for e in events), key=lambda e: e.timestamp)
    catalog = [to_item_upsert(i) for i in items.values()]

    kafka, cluster = None, Settings.from_env().cluster  # KAFKA_BOOTSTRAP, CURRENTS_KAFKA_*
    if not os.environ.get("KAFKA_BOOTSTRAP"):
        kafka = LocalKafka(work / "kafka", partitions=args.partitions, heap="1g")
        kafka.start()
        cluster = kafka.cluster
    settings = Settings(
        app_id="bench-live", bootstrap=cluster.bootstrap, kafka=cluster.security,
        partitions=args.partitions,
        events_topic="bench.events", catalog_topic="bench.catalog",
        item_vectors_topic="bench.item-vectors", updates_topic="bench.updates",
        dead_letter_topic="bench.dead-letters", data_dir=work / "live",
        web_port=free_port(), checkpoint=args.checkpoint,
    )  # fmt: skip
    try:
        ensure_topics(settings)
        produce(cluster, settings.catalog_topic, catalog, lambda i: i.item_id)
        worker = spawn_worker(settings, work / "encode.log", loglevel="warning")
        ready(settings, worker)  # the catalog is encoded once, before the history arrives
        terminate(worker)
        produce(cluster, settings.events_topic, events, lambda e: e.user_id)

        rounds = []
        for number in range(args.rounds):
            if args.rounds > 1:
                print(f"round {number + 1} of {args.rounds}", flush=True)
            suffix = f"-{number}" if number else ""  # the first round keeps the names of one
            live = settings.model_copy(
                update={"app_id": f"bench-live{suffix}", "updates_topic": f"bench.updates{suffix}",
                        "data_dir": work / f"live{suffix}"}
            )  # fmt: skip
            ensure_topics(live)
            rounds.append(run_round(args, live, len(events), work, suffix, report=number == 0))
        report = json.loads((args.report / "report.json").read_text())
        result = next(iter(report["topics"].values()))
        print(f"    prequential HR@10 {result['hr@10']:.4f}, NDCG@10 {result['ndcg@10']:.4f}")
        results = {
            "machine": machine(), "git": git_sha(), "events": len(events),
            "partitions": args.partitions, "checkpoint": str(args.checkpoint),
            "prequential": {k: result[k] for k in ("events", "scored", "hr@10", "ndcg@10")},
            "first_event": events[0].timestamp.isoformat(),
            "last_event": events[-1].timestamp.isoformat(),
            "rounds": rounds,
        }  # fmt: skip
        # each figure's median over the rounds; a ratio's, of the ratios within each round
        for key in rounds[0]:
            results[key] = statistics.median(r[key] for r in rounds)
        print(
            f"    replay / live: {results['replay_vs_live']:.2f} (one update per event), "
            f"{results['coalesced_replay_vs_live']:.2f} (--coalesce)"
            + (f"; medians of {args.rounds} rounds" if args.rounds > 1 else "")
        )
        results["cpu_steal"] = steal_share(started)
        print(f"    CPU time taken by the hypervisor during the run: {results['cpu_steal']:.0%}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if kafka is not None:
            kafka.stop()


def run_round(args, live: Settings, total: int, work: Path, suffix: str, report: bool) -> dict:
    """(a) live, (b) replay, (c) replay --coalesce, one after the other; their rates."""
    worker = spawn_worker(live, work / f"live{suffix}.log", loglevel="warning")
    try:
        ready(live, worker)
        live_rate = wait_and_rate(live, total, worker)
    finally:
        terminate(worker)
    print(f"(a) live: {live_rate:.0f} events/s", flush=True)
    env = {**os.environ, **live.to_env()}
    env.pop("KAFKA_BOOTSTRAP", None)
    figures = {"live_events_per_s": live_rate}
    report_options = ["--report", str(args.report), "--window", args.window] if report else []
    for label, prefix, name, options in (
        ("(b) replay", "replay", f"bench{suffix}", report_options),
        ("(c) replay --coalesce", "coalesced_replay", f"bench-coalesced{suffix}", ["--coalesce"]),
    ):
        updates, rate, wall = run_replay(args.checkpoint, name, options, env, work, live.cluster)
        print(f"{label}: {rate:.0f} events/s ({updates} updates; {wall:.0f} s wall)", flush=True)
        figures |= {
            f"{prefix}_events_per_s": rate, f"{prefix}_vs_live": rate / live_rate,
            f"{prefix}_updates": updates, f"{prefix}_wall_s": wall,
        }  # fmt: skip
    return figures


def run_replay(checkpoint: Path, name: str, options: list[str], env, work: Path, cluster: Cluster):
    """`currents replay` from the beginning; (its updates, events/s, wall seconds)."""
    started = time.monotonic()
    command = [
        sys.executable, "-m", "stream", "replay", "--checkpoint", str(checkpoint),
        "--name", name, *options,
    ]  # fmt: skip
    replay = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True)
    wall = time.monotonic() - started
    if replay.returncode != 0:
        raise SystemExit(f"replay failed:\n{replay.stdout}\n{replay.stderr}")
    updates, _, rate = rate_of(cluster, f"currents.replay.{name}.updates")
    return updates, rate, wall


def wait_and_rate(settings: Settings, total: int, worker, timeout=1800.0) -> float:
    """Wait until the worker has applied `total` events (its /metrics), then the rate from the
    timestamps of its updates."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        time.sleep(2)
        if events_applied(settings) >= total:
            return rate_of(settings.cluster, settings.updates_topic)[2]
    raise TimeoutError(f"the live worker did not apply all {total} events")


def events_applied(settings: Settings) -> float:
    url = f"http://127.0.0.1:{settings.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("currents_events_total "):
                return float(line.split()[1])
    return 0.0


def rate_of(cluster: Cluster, topic: str) -> tuple[int, int, float]:
    """(updates, events they cover, events/s between the first and last update's Kafka
    timestamps)."""
    consumer = cluster.consumer(
        topic, auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=2000,
    )  # fmt: skip
    first = last = None
    updates = events = 0
    for record in consumer:
        first = record.timestamp if first is None else min(first, record.timestamp)
        last = record.timestamp if last is None else max(last, record.timestamp)
        updates += 1
        events += len(json.loads(record.value)["events"])
    consumer.close()
    if first is None:
        return 0, 0, 0.0
    return updates, events, events / max((last - first) / 1000, 1e-3)


if __name__ == "__main__":
    main()
