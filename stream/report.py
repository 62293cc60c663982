"""`currents report`: prequential quality of replays over time, and how two versions compare.

A replay puts on each event the rank its item had in the user's ranking just before the event
(test, then learn). This reads a replay's output topic and turns those ranks into HR@10 and
NDCG@10 per time window (event time) and overall: a JSON file and a PNG plot. Given two output
topics (two model versions replayed over the same history), it also reports how much their
top-10 lists after each event overlap.
"""

import argparse
import json
import math
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import TopicPartition

from stream.connection import Cluster

__all__ = ["add_arguments", "overlap", "prequential", "read_updates", "run", "write_report"]

K = 10
WINDOWS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


def read_updates(cluster: Cluster, topic: str) -> dict[str, dict]:
    """Every update in `topic` from its beginning to its current end, by update id (an update
    re-published after a crash has the same id and content). Record CRCs are not checked again:
    the broker checked them when they were produced, and kafka-python's CRC-32C is pure Python
    (100,000 updates: 19-23 s with the check, 5-6 s without; docs/benchmarks.md)."""
    consumer = cluster.consumer(group_id=None, enable_auto_commit=False, check_crcs=False)
    try:
        if topic not in consumer.topics():
            raise ValueError(f"topic {topic!r} does not exist on {cluster.bootstrap}")
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(tps)
        updates = {}
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=1000, max_records=5000).values():
                for record in records:
                    if record.value is None:  # a forgotten user's tombstone
                        continue
                    if record.offset < end[TopicPartition(record.topic, record.partition)]:
                        update = json.loads(record.value)
                        updates.setdefault(update["update_id"], update)
        return updates
    finally:
        consumer.close()


def _window_start(when: datetime, window: timedelta) -> datetime:
    epoch = datetime(1970, 1, 5, tzinfo=UTC)  # a Monday: weeks start on Mondays
    return epoch + ((when - epoch) // window) * window


def prequential(updates: dict[str, dict], window: str = "day") -> dict:
    """HR@10 and NDCG@10 of the ranks carried by per-event updates, per window and overall.

    Events without a rank (a user's first event) are counted but not scored."""
    size = WINDOWS[window]
    cells: dict[datetime, list[float]] = defaultdict(lambda: [0, 0, 0.0])  # cases, hits, ndcg
    versions, events = set(), 0
    for update in updates.values():
        versions.add(update["model_version"])
        for ref in update["events"]:
            events += 1
            if ref.get("rank") is None:
                continue
            when = datetime.fromisoformat(ref["timestamp"])
            cell = cells[_window_start(when, size)]
            cell[0] += 1
            if ref["rank"] <= K:
                cell[1] += 1
                cell[2] += 1 / math.log2(ref["rank"] + 1)
    cases = sum(c[0] for c in cells.values())
    return {
        "model_versions": sorted(versions),
        "events": events,
        "scored": cases,
        f"hr@{K}": sum(c[1] for c in cells.values()) / cases if cases else None,
        f"ndcg@{K}": sum(c[2] for c in cells.values()) / cases if cases else None,
        "window": window,
        "windows": [
            {
                "start": start.isoformat(),
                "scored": c[0],
                f"hr@{K}": c[1] / c[0],
                f"ndcg@{K}": c[2] / c[0],
            }
            for start, c in sorted(cells.items())
        ],  # fmt: skip
    }


def overlap(a: dict[str, dict], b: dict[str, dict]) -> dict:
    """Mean share of the top-10 two versions have in common after the same event."""

    def by_event(updates):
        return {
            (u["user_id"], u["events"][-1]["event_id"]): [
                r["item_id"] for r in u["recommendations"][:K]
            ]
            for u in updates.values()
        }

    left, right = by_event(a), by_event(b)
    common = left.keys() & right.keys()
    shares = [len(set(left[e]) & set(right[e])) / K for e in common]
    return {"events": len(common), f"overlap@{K}": sum(shares) / len(shares) if shares else None}


def write_report(cluster: Cluster, topics: list[str], out: Path, window: str = "day") -> list[Path]:
    """report.json (+ report.png) in `out` for one replay, or a comparison of several."""
    updates = {topic: read_updates(cluster, topic) for topic in topics}
    report = {"topics": {t: prequential(u, window) for t, u in updates.items()}}
    if len(topics) == 2:
        report["comparison"] = overlap(*updates.values())
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json", out / "report.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    plot(report, paths[1])
    return paths


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (hr, cases) = plt.subplots(
        2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for topic, result in report["topics"].items():
        starts = [datetime.fromisoformat(w["start"]) for w in result["windows"]]
        label = f"{', '.join(result['model_versions'])} ({topic})"
        hr.plot(
            starts, [w[f"hr@{K}"] for w in result["windows"]], marker="o", label=f"HR@{K} {label}"
        )
        hr.plot(starts, [w[f"ndcg@{K}"] for w in result["windows"]], marker=".", linestyle="--",
                label=f"NDCG@{K} {label}")  # fmt: skip
        cases.bar(
            starts,
            [w["scored"] for w in result["windows"]],
            width=0.8 * WINDOWS[result["window"]],
            alpha=0.5,
        )
    hr.set_ylabel("prequential quality")
    hr.set_ylim(bottom=0)
    hr.grid(alpha=0.3)
    hr.legend(fontsize=8)
    hr.set_title(
        f"Prequential HR@{K} / NDCG@{K} per {next(iter(report['topics'].values()))['window']}"
    )
    cases.set_ylabel("events scored")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "topics", nargs="+", metavar="TOPIC", help="replay output topic(s); two are compared"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="report folder")
    parser.add_argument("--window", choices=WINDOWS, default="day", help="(default day)")


def run(args: argparse.Namespace) -> int:
    from stream.produce import quiet_kafka_logs
    from stream.settings import Settings

    quiet_kafka_logs()
    if len(args.topics) > 2:
        print("error: give one topic, or two to compare", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        settings.cluster.check()
        paths = write_report(settings.cluster, args.topics, args.out, args.window)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = json.loads(paths[0].read_text())
    for topic, result in report["topics"].items():
        print(f"{topic}: {result['scored']} events scored, HR@{K} {result[f'hr@{K}']}, "
              f"NDCG@{K} {result[f'ndcg@{K}']}")  # fmt: skip
    if "comparison" in report:
        print(f"top-{K} overlap: {report['comparison']}")
    for path in paths:
        print(f"wrote {path}")
    return 0
