"""`currents replay`: re-score history from the events topic with any model version.

A replay is the live worker's app (stream/app.py), bounded by its plan, in a namespace of its
own: its own consumer group, its own state tables and changelogs, its own output and
dead-letter topics, its own data directory. It reads the live events and item-vectors topics and
writes nothing the live workers read. Differences from a live worker: it starts at `--from` (a
new namespace only; an existing one resumes where it stopped), stops by itself at `--until`
(unless `--follow`), publishes one update per event (so its outputs do not depend on how
batches formed; `--coalesce` publishes one per user and batch, as live workers do), and puts on
each event the rank its item had in the user's ranking just before it: the prequential check
that `currents report` turns into quality over time.

Everything that can be checked is checked before any work starts: the topic, the positions,
the checkpoint against the item catalog. Interrupt with Ctrl-C; the same command resumes.
"""

import argparse
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata
from tqdm import tqdm

from stream.connection import Cluster
from stream.settings import Settings

__all__ = ["ReplayError", "ReplayPlan", "add_arguments", "parse_position", "plan_replay", "run"]

log = logging.getLogger(__name__)
OFFSETS = re.compile(r"^\d+:\d+(,\d+:\d+)*$")


class ReplayError(Exception):
    """A replay that cannot start, and why; raised before any work is done."""


@dataclass
class ReplayPlan:
    """Where a replay starts and ends in each partition of the events topic; the bounds the
    worker keeps to (stream/worker.py, Bounds)."""

    topic: str
    start: dict[int, int]  # partition -> first offset to process
    until: dict[int, int] | None  # partition -> end offset (exclusive); None = follow forever
    resumed: bool = False  # the namespace had committed offsets: --from was not applied
    per_event: bool = True  # one update per event; False (--coalesce): per user and batch
    processed: dict[int, int] = field(default_factory=dict)  # partition -> next offset, live
    finished: bool = False
    started_at: float = field(default_factory=time.monotonic)
    bar: tqdm | None = field(default=None, repr=False)  # shown while the worker runs

    @property
    def total(self) -> int | None:
        if self.until is None:
            return None
        return sum(max(0, self.until[p] - self.start[p]) for p in self.start)

    def done(self) -> int:
        """Events processed so far (read or dead-lettered), from the agent's own progress."""
        ends = self.until or {}
        return sum(
            max(0, min(self.processed.get(p, start), ends.get(p, sys.maxsize)) - start)
            for p, start in self.start.items()
        )

    def complete(self) -> bool:
        return self.until is not None and all(
            self.processed.get(p, self.start[p]) >= end for p, end in self.until.items()
        )

    def end(self, partition: int) -> int | None:
        return self.until.get(partition) if self.until else None

    def advance(self, offsets: Mapping[int, int]) -> None:
        self.processed.update(offsets)

    def show_progress(self) -> None:
        self.bar = tqdm(
            total=self.total, unit="ev", desc="replay", smoothing=0.1, dynamic_ncols=True
        )

    def tick(self) -> None:
        """Called by the worker's timer: advance the bar; at the end ask the worker to stop
        (SIGTERM: Faust then flushes the outputs, commits and closes the tables)."""
        if self.bar is not None:
            self.bar.n = self.done()
            self.bar.refresh()
        if self.complete() and not self.finished:
            self.finished = True
            if self.bar is not None:
                self.bar.close()
            os.kill(os.getpid(), signal.SIGTERM)


# --- positions ----------------------------------------------------------------------------


def parse_position(
    text: str,
    beginning: dict[int, int],
    end: dict[int, int],
    unlisted: dict[int, int],
    offset_at: Callable[[int], dict[int, int]],
) -> dict[int, int]:
    """`earliest`, `now`/`latest`, an ISO-8601 time or `partition:offset,...` -> offsets.

    A time gives, per partition, the first record appended at or after it (Kafka record
    timestamps). Partitions a `p:o` list leaves out take `unlisted` (the beginning for a
    start, the end for an end). Raises ReplayError on anything else.
    """
    partitions = sorted(beginning)
    if text == "earliest":
        return dict(beginning)
    if text in ("now", "latest"):
        return dict(end)
    if OFFSETS.match(text):
        chosen = dict(unlisted)
        for pair in text.split(","):
            partition, offset = (int(x) for x in pair.split(":"))
            if partition not in partitions:
                raise ReplayError(
                    f"partition {partition} does not exist (partitions: 0-{max(partitions)})"
                )
            if not beginning[partition] <= offset <= end[partition]:
                raise ReplayError(
                    f"offset {offset} is out of range for partition {partition}: "
                    f"it holds offsets {beginning[partition]}-{end[partition]} (end exclusive)"
                )
            chosen[partition] = offset
        return chosen
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReplayError(
            f"cannot read position {text!r}: use earliest, now, an ISO time "
            "(2024-05-01T00:00:00Z) or partition:offset,..."
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return offset_at(int(when.timestamp() * 1000))


def plan_replay(
    cluster: Cluster, topic: str, start: str, until: str | None, group: str
) -> ReplayPlan:
    """Resolve --from/--until against the topic, and the namespace's own committed offsets."""
    consumer = cluster.consumer(group_id=None, enable_auto_commit=False)
    try:
        if topic not in consumer.topics():
            raise ReplayError(f"topic {topic!r} does not exist on {cluster.bootstrap}")
        partitions = sorted(consumer.partitions_for_topic(topic))
        tps = {p: TopicPartition(topic, p) for p in partitions}
        beginning = {p: o for tp, o in consumer.beginning_offsets(list(tps.values())).items()
                     for p in [tp.partition]}  # fmt: skip
        end = {tp.partition: o for tp, o in consumer.end_offsets(list(tps.values())).items()}

        def offset_at(ms: int) -> dict[int, int]:
            found = consumer.offsets_for_times({tp: ms for tp in tps.values()})
            return {p: end[p] if found[tp] is None else found[tp].offset for p, tp in tps.items()}

        first = parse_position(start, beginning, end, beginning, offset_at)
        last = None if until is None else parse_position(until, beginning, end, end, offset_at)
    finally:
        consumer.close()
    if last is not None:
        after = [p for p in partitions if first[p] > last[p]]
        if after:
            raise ReplayError(
                f"--from is after --until in partition(s) {', '.join(map(str, after))}: "
                + ", ".join(f"{p}: {first[p]} > {last[p]}" for p in after)
            )
    committed = _committed(cluster, group, topic)
    if committed:
        # resume: the namespace's progress wins over --from
        first = {p: committed.get(p, first[p]) for p in partitions}
        if last is not None:
            last = {p: max(last[p], first[p]) for p in partitions}
    return ReplayPlan(topic, first, last, resumed=bool(committed))


def _committed(cluster: Cluster, group: str, topic: str) -> dict[int, int]:
    admin = cluster.admin()
    try:
        offsets = admin.list_group_offsets({group: None}).get(group, {})
    finally:
        admin.close()
    return {
        tp.partition: o.offset for tp, o in offsets.items() if tp.topic == topic and o.offset >= 0
    }


def check_unused(settings: Settings, model_version: str) -> None:
    """A new namespace (no committed offsets) must hold no states of an earlier run of the same
    name, half retired: Faust would restore them from a kept changelog or the kept local
    stores, and the replay would take that run's events as applied and publish its views."""
    from stream.topics import changelog_topic, state_tables

    tables = state_tables(model_version)
    left = [f"local states in {settings.data_dir}"] if any(
        any(settings.data_dir.glob(f"*/tables/{table}-*.db")) for table in tables
    ) else []  # fmt: skip
    consumer = settings.cluster.consumer(group_id=None)
    try:
        existing = consumer.topics()
    finally:
        consumer.close()
    left += [
        f"topic {name}"
        for name in (changelog_topic(settings.app_id, table) for table in tables)
        if name in existing
    ]
    if left:
        raise ReplayError(
            f"namespace {settings.app_id!r} has no committed offsets but holds an earlier run's "
            f"states ({'; '.join(left)}): delete them (docs/replay.md, switching model "
            "versions, step 5) or choose another --name"
        )


def commit_start(cluster: Cluster, group: str, plan: ReplayPlan) -> None:
    """Point the new namespace's consumer group at the start: Faust begins there."""
    admin = cluster.admin()
    try:
        offsets = {
            TopicPartition(plan.topic, p): OffsetAndMetadata(o, "", -1)
            for p, o in plan.start.items()
        }
        errors = admin.alter_group_offsets(group, offsets)
    finally:
        admin.close()
    failed = {tp: e for tp, e in errors.items() if e.__name__ != "NoError"}
    if failed:
        raise ReplayError(f"cannot set the start offsets of group {group!r}: {failed}")


# --- the catalog check --------------------------------------------------------------------


def check_catalog(cluster: Cluster, topic: str, checkpoint) -> int:
    """The item vectors a replay would score against must fit the checkpoint: same encoder,
    same width, and some of the items it was trained on. Returns the number of live items."""
    from stream.items import ItemVector

    consumer = cluster.consumer(group_id=None, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) if topic in consumer.topics() else None
        if not partitions:
            raise ReplayError(
                f"item-vectors topic {topic!r} does not exist: a live worker encodes the "
                "catalog into it; start one (currents worker) before replaying"
            )
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(tps)
        items: dict[str, ItemVector | None] = {}
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=1000).values():
                for r in records:
                    item_id = r.key.decode()
                    items[item_id] = (
                        None if r.value is None else ItemVector.from_bytes(item_id, r.value)
                    )
    finally:
        consumer.close()
    live = {i: v for i, v in items.items() if v is not None}
    if not live:
        raise ReplayError(f"no items in {topic!r}: publish the catalog before replaying")
    encoders = {v.encoder for v in live.values()}
    if encoders != {checkpoint.encoder_name}:
        raise ReplayError(
            f"the catalog in {topic!r} was encoded with {', '.join(sorted(encoders))}, the "
            f"checkpoint needs {checkpoint.encoder_name}: the checkpoint does not match the catalog"
        )
    width = next(iter(live.values())).vector.size
    if width != checkpoint.config.text_dim:
        raise ReplayError(
            f"item vectors are {width} wide, the checkpoint expects {checkpoint.config.text_dim}"
        )
    known = sum(item in live for item in checkpoint.item_index)
    if checkpoint.item_index and not known:
        raise ReplayError(
            f"none of the {len(checkpoint.item_index)} items the checkpoint was trained on is in "
            f"the catalog ({len(live)} items): the checkpoint does not match the catalog"
        )
    return len(live)


# --- the command --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="model to replay with")
    parser.add_argument(
        "--events", metavar="TOPIC", help="events topic to replay (default: the live one)"
    )
    parser.add_argument(
        "--from",
        dest="start",
        default="earliest",
        metavar="POSITION",
        help="earliest (default), an ISO time, or partition:offset,... (a new namespace only; "
        "an existing one resumes where it stopped)",
    )
    parser.add_argument(
        "--until",
        default="now",
        metavar="POSITION",
        help="now (default: the end when the replay starts), an ISO time or partition:offset,...",
    )
    parser.add_argument(
        "--follow", action="store_true", help="do not stop at the end: keep following live"
    )
    parser.add_argument(
        "--name",
        help="namespace: consumer group, tables, topics, data folder (default: v<model version>)",
    )
    parser.add_argument(
        "--output", metavar="TOPIC", help="updates out (default currents.replay.<name>.updates)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1024, help="events per model step (default 1024)"
    )
    parser.add_argument(
        "--coalesce",
        action="store_true",
        help="one update per user and batch, as live workers publish, instead of one per event: "
        "fewer messages, to catch a new version up; which events share an update then depends "
        "on batching (states, the events covered and their ranks do not)",
    )
    parser.add_argument(
        "--report", type=Path, metavar="DIR", help="at the end, write the prequential report"
    )
    parser.add_argument(
        "--window", choices=("hour", "day", "week"), default="day", help="report window (day)"
    )


def replay_settings(args: argparse.Namespace, version: str) -> Settings:
    live = Settings.from_env()
    name = args.name or f"v{version}"
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name):
        raise ReplayError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    output = args.output or f"currents.replay.{name}.updates"
    if output in (live.updates_topic, live.events_topic, args.events or live.events_topic):
        raise ReplayError(f"--output {output!r} is a live topic: a replay never writes there")
    return live.model_copy(
        update={
            "app_id": f"{live.app_id}-replay-{name}",
            "events_topic": args.events or live.events_topic,
            "updates_topic": output,
            "dead_letter_topic": f"currents.replay.{name}.dead-letters",
            "data_dir": live.data_dir.parent / "replay" / name,
            "checkpoint": args.checkpoint,
            "batch_size": args.batch_size,
            "batch_window": max(live.batch_window, 0.2),
        }
    )


def prepare(args: argparse.Namespace) -> tuple[Settings, ReplayPlan]:
    """Every check, then the namespace's topics and start offsets. Raises ReplayError."""
    from model.checkpoint import load_checkpoint
    from stream.topics import ensure_topics

    if args.report and args.follow:
        raise ReplayError("--report needs an end: drop --follow (or run currents report later)")
    if not args.checkpoint.is_file():
        raise ReplayError(f"no checkpoint at {args.checkpoint}")
    try:
        checkpoint = load_checkpoint(args.checkpoint)
    except Exception as error:
        raise ReplayError(f"cannot load checkpoint {args.checkpoint}: {error}") from None
    settings = replay_settings(args, checkpoint.version)
    settings.cluster.check()  # a refused connection ends here, with its cause
    plan = plan_replay(
        settings.cluster, settings.events_topic, args.start,
        None if args.follow else args.until, settings.app_id,
    )  # fmt: skip
    plan.per_event = not args.coalesce
    if not plan.resumed:
        check_unused(settings, checkpoint.version)
    items = check_catalog(settings.cluster, settings.item_vectors_topic, checkpoint)
    ensure_topics(settings, only=[settings.updates_topic, settings.dead_letter_topic])
    if not plan.resumed:
        commit_start(settings.cluster, settings.app_id, plan)
    what = "resuming" if plan.resumed else "starting"
    total = "following live" if plan.total is None else f"{plan.total} events to go"
    print(
        f"Replay {settings.app_id} {what}: model {checkpoint.version}, {items} items, "
        f"{settings.events_topic} -> {settings.updates_topic}, {total}.",
        flush=True,
    )
    return settings, plan


def run(args: argparse.Namespace) -> int:
    """0 when the replay reached its end, 2 when it could not start, 130 when interrupted,
    1 when it failed."""
    from stream.app import create_app
    from stream.produce import quiet_kafka_logs
    from stream.worker import create_worker

    quiet_kafka_logs()
    try:
        settings, plan = prepare(args)
    except ReplayError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, bounds=plan)
    worker = create_worker(app, settings, "warning", quiet=True)
    plan.show_progress()
    try:
        worker.execute_from_commandline()
    except SystemExit as exit:
        if exit.code not in (None, 0) and not plan.finished:
            print(f"error: the replay stopped (exit code {exit.code}); see above", file=sys.stderr)
            return 1
    if not plan.finished:
        print(f"Interrupted after {plan.done()} events; run the same command to resume.")
        return 130
    seconds = time.monotonic() - plan.started_at
    print(f"Replayed {plan.done()} events in {seconds:.1f} s into {settings.updates_topic}.")
    if args.report:
        from stream.report import write_report

        for path in write_report(settings.cluster, [settings.updates_topic], args.report,
                                 args.window):  # fmt: skip
            print(f"wrote {path}")
    return 0
