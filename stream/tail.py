"""`currents tail`: watch the interest updates workers publish, readable in a terminal.

It reads without a consumer group, so it never takes partitions from anyone nor commits
offsets: any number of tails can watch a production topic. A record that is not an
`InterestUpdate` gets a one-line warning; tail is a debugging tool and must survive the very
records one would want to debug.
"""

import argparse
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from pydantic import ValidationError

from model.data import load_jsonl_items
from schemas import EventType, InterestUpdate, Reason
from stream.items import ItemVector
from stream.produce import non_negative, quiet_kafka_logs
from stream.settings import Settings

__all__ = ["add_arguments", "because_text", "format_update", "item_titles", "run"]

BAR_WIDTH = 10
MAX_NAME_WIDTH = 24  # longer category names are cut so the bars stay aligned
MAX_TITLE_WIDTH = 32


def format_update(
    update: InterestUpdate, titles: Mapping[str, str] | None = None, top: int = 5
) -> str:
    """A header line, the `top` interests as bars with their shift since the user's previous
    update, and the top recommendations, with titles where `titles` has them, each with the
    events it is recommended because of:

    user-7  2024-05-07 14:03:11Z  model v3  2 events (1 click, 1 view), last user-7:0041  …
      Space  ████████░░ 0.81 (+0.35)
      Jazz   ██░░░░░░░░ 0.15 (-0.31)
      recommended:
        space-04 (Deep Nebula)
          because you viewed Lunar Orbit, clicked Star Map
    """
    titles = titles or {}
    last = update.events[-1]
    lines = [
        f"{update.user_id}  {last.timestamp:%Y-%m-%d %H:%M:%S}Z  model {update.model_version}  "
        f"{_plural(len(update.events), 'event')} ({_kinds(update)}), last {last.event_id}  "
        f"latency {update.latency_ms:.0f} ms"
    ]
    interests = sorted(update.interests.items(), key=lambda pair: -pair[1])[:top]
    width = max((len(_cut(name, MAX_NAME_WIDTH)) for name, _ in interests), default=0)
    for name, weight in interests:
        shift = update.interest_shift.get(name, 0.0)
        label = _cut(name, MAX_NAME_WIDTH).ljust(width)
        lines.append(f"  {label}  {_bar(weight)} {weight:.2f} ({shift:+.2f})")
    if not interests:
        lines.append("  interests: none yet")
    if not update.recommendations[:top]:
        lines.append("  recommended: nothing")
        return "\n".join(lines)
    lines.append("  recommended:")
    for recommendation in update.recommendations[:top]:
        lines.append(f"    {_named(recommendation.item_id, titles)}")
        if recommendation.because:
            lines.append(f"      {because_text(recommendation.because, titles)}")
    return "\n".join(lines)


def because_text(reasons: Iterable[Reason], titles: Mapping[str, str]) -> str:
    """'because you viewed A, clicked B': the events a recommendation cites, by item title."""
    said = [
        f"{_PAST.get(reason.event_type, 'saw')} "
        + _cut(titles.get(reason.item_id, reason.item_id), MAX_TITLE_WIDTH)
        for reason in reasons
    ]
    return "because you " + ", ".join(said)


_PAST = {EventType.CLICK: "clicked", EventType.VIEW: "viewed"}


def _named(item_id: str, titles: Mapping[str, str]) -> str:
    return f"{item_id} ({_cut(titles[item_id], MAX_TITLE_WIDTH)})" if item_id in titles else item_id


def _kinds(update: InterestUpdate) -> str:
    counts = Counter(ref.event_type.value for ref in update.events)
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def _bar(weight: float) -> str:
    filled = round(min(max(weight, 0.0), 1.0) * BAR_WIDTH)
    return "█" * filled + "░" * (BAR_WIDTH - filled)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", metavar="ID", help="show only this user's updates")
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest retained update (default: only updates published from now on)",
    )
    parser.add_argument(
        "--limit", type=non_negative(int), metavar="N", help="stop after showing N updates"
    )
    parser.add_argument(
        "--timeout",
        type=non_negative(float),
        metavar="SECONDS",
        help="stop after this many seconds without a record (default: wait until Ctrl-C)",
    )
    parser.add_argument(
        "--top",
        type=non_negative(int),
        default=5,
        metavar="N",
        help="interests and recommended items shown per update (default 5)",
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        metavar="PATH",
        help="ItemUpsert JSONL, to show item titles (default: those on the item-vectors topic)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print each update as one JSON object per line"
    )


def run(args: argparse.Namespace) -> int:
    """Print updates until --limit, --timeout or Ctrl-C; 1 on Kafka errors, 2 on a bad catalog."""
    titles = {}
    if args.catalog:
        try:
            titles = {
                item_id: item.title for item_id, item in load_jsonl_items(args.catalog).items()
            }
        except (OSError, ValueError) as error:
            print(f"error: cannot read the catalog: {error}", file=sys.stderr)
            return 2
    quiet_kafka_logs()
    settings = Settings.from_env()
    settings.cluster.check()  # a refused connection ends here, with its cause
    if not args.catalog and not args.json:
        titles = item_titles(settings)
    try:
        consumer = settings.cluster.consumer(
            settings.updates_topic,
            client_id="currents-tail",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if args.from_beginning else "latest",
            consumer_timeout_ms=float("inf") if args.timeout is None else args.timeout * 1000,
        )
    except KafkaError as error:
        print(f"error: Kafka at {settings.bootstrap}: {error!r}", file=sys.stderr)
        return 1
    try:
        updates = (u for u in _decoded(consumer) if args.user in (None, u.user_id))
        for update in islice(updates, args.limit):
            text = (
                update.model_dump_json() if args.json else format_update(update, titles, args.top)
            )
            print(text, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def _decoded(records: Iterable[ConsumerRecord]) -> Iterator[InterestUpdate]:
    """The records that are InterestUpdates; a warning on stderr for each one that is not."""
    for record in records:
        if record.value is None:  # a forgotten user's tombstone (currents forget)
            continue
        try:
            yield InterestUpdate.model_validate_json(record.value)
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            field = ".".join(str(part) for part in first["loc"])
            print(
                f"warning: skipped {record.topic}[{record.partition}]@{record.offset}, "
                f"not an InterestUpdate: {f'{field}: ' if field else ''}{first['msg']}",
                file=sys.stderr,
                flush=True,
            )


def item_titles(settings: Settings, timeout: float = 10.0) -> dict[str, str]:
    """Every item's title as the item-vectors topic has it now (the workers' own catalog); an
    empty map when the topic cannot be read in `timeout` seconds: titles are a nicety."""
    try:
        consumer = settings.cluster.consumer(group_id=None, enable_auto_commit=False)
    except KafkaError:
        return {}
    titles: dict[str, str] = {}
    try:
        partitions = consumer.partitions_for_topic(settings.item_vectors_topic) or set()
        assigned = [TopicPartition(settings.item_vectors_topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning()
        end = consumer.end_offsets(assigned)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(consumer.position(p) < end[p] for p in end):
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    item_id = record.key.decode()
                    if record.value is None:
                        titles.pop(item_id, None)
                    else:
                        titles[item_id] = ItemVector.from_bytes(item_id, record.value).title
    except (KafkaError, ValueError):
        pass
    finally:
        consumer.close()
    return titles
