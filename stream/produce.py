"""`currents produce`: stream behaviour events, and optionally the catalog, into Kafka.

The input is a JSONL file of `BehaviorEvent`s, a public dataset read by model.data (MovieLens,
MIND, Amazon) or the generated demo world. Rows the schemas reject are counted, reported with
where they were, and skipped: one bad row must not stop a replay of a million good ones.
Events are sent at a fixed rate (or as fast as possible), keyed by user id as the workers
require, after the catalog, so that workers know the items before the events that name them.
"""

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from kafka import KafkaProducer
from kafka.errors import KafkaError
from pydantic import ValidationError
from tqdm import tqdm

from model.data import Event, Item, load_dataset, open_text
from schemas import (
    BehaviorEvent,
    EventType,
    InvalidMessage,
    ItemDeletion,
    ItemUpsert,
    UserErasure,
    decode_catalog,
    decode_event,
)
from stream.demo_data import demo_catalog, demo_events
from stream.settings import Settings
from stream.topics import ensure_topics

__all__ = [
    "Rejected",
    "add_arguments",
    "dataset_messages",
    "non_negative",
    "paced",
    "quiet_kafka_logs",
    "read_jsonl",
    "run",
    "send_erasures",
    "to_behavior_event",
    "to_item_upsert",
]

DATASETS = ("movielens", "mind", "amazon", "letter", "demo")
REPORTED_REJECTS = 5  # bad rows printed one by one; the rest are only counted
LINGER_MS = 10  # lets the producer batch at high rates at the cost of 10 ms latency

T = TypeVar("T")
Message = TypeVar("Message")


@dataclass(frozen=True)
class Rejected:
    """A skipped input row: where it was (`events.jsonl:12`, `event 1:31:874965758`) and why."""

    where: str
    reason: str


@dataclass
class _Delivery:
    sent: int = 0  # records handed to the producer
    failed: list[Exception] = field(default_factory=list)  # filled by the producer's I/O thread

    @property
    def delivered(self) -> int:
        return self.sent - len(self.failed)


def non_negative(kind: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type: `kind(text)`, refused when below 0 (or NaN)."""

    def parse(text: str) -> T:
        value = kind(text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid <name> value" errors
    return parse


def quiet_kafka_logs() -> None:
    """Keep kafka-python's connection and metadata INFO lines out of a command's output."""
    logging.getLogger("kafka").setLevel(logging.WARNING)


def paced(
    items: Iterable[T],
    rate: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[T]:
    """Yield `items` at `rate` per second; 0 yields them as fast as they are taken.

    Item i is due at start + i / rate. Due times are fixed from the start rather than counted
    from the previous send, so time spent sending never adds up to drift; an item that is late
    (the consumer was slow) goes at once, which keeps the long-run rate exact.
    """
    if rate <= 0:
        yield from items
        return
    start = clock()
    for index, item in enumerate(items):
        delay = start + index / rate - clock()
        if delay > 0:
            sleep(delay)
        yield item


def read_jsonl(
    path: Path, decode: Callable[[bytes], Message]
) -> tuple[list[Message], list[Rejected]]:
    """Decode every non-blank line (gzip read transparently); failures come back as Rejected."""
    messages, rejected = [], []
    with open_text(path) as text:
        # bytes, so a line that is not UTF-8 is one bad row rather than an exception mid-file
        for number, line in enumerate(text.buffer, 1):
            if not line.strip():
                continue
            try:
                messages.append(decode(line))
            except InvalidMessage as error:
                rejected.append(Rejected(f"{path}:{number}", error.reason))
    return messages, rejected


def to_behavior_event(event: Event) -> BehaviorEvent:
    """A dataset event as the wire message; ValueError when it breaks the schema."""
    return BehaviorEvent(
        event_id=event.event_id,
        user_id=event.user_id,
        item_id=event.item_id,
        event_type=EventType(event.event_type),
        timestamp=datetime.fromtimestamp(event.timestamp, UTC),
        dwell_ms=event.dwell_ms,
    )


def to_item_upsert(item: Item) -> ItemUpsert:
    """A dataset item as the wire message; ValueError when it breaks the schema."""
    return ItemUpsert(
        item_id=item.item_id,
        title=item.title,
        description=item.description,
        categories=list(item.categories),
    )


def dataset_messages(
    name: str, paths: list[Path]
) -> tuple[list[BehaviorEvent], list[ItemUpsert], list[Rejected]]:
    """The events (in time order) and catalog of a dataset, and the rows the schemas reject.

    `paths` are what model.data.load_dataset takes; the demo world needs none. The loaders
    order events by user; a live stream interleaves users, so events are re-sorted by time
    (a stable sort, which keeps each user's own order).
    """
    if name == "demo":
        catalog = demo_catalog()
        return demo_events(catalog), catalog, []
    events, items = load_dataset(name, [str(path) for path in paths])
    messages, rejected = _convert(events, to_behavior_event, lambda e: f"event {e.event_id}")
    catalog, rejected_items = _convert(
        items.values(), to_item_upsert, lambda i: f"item {i.item_id}"
    )
    messages.sort(key=lambda message: message.timestamp)
    return messages, catalog, rejected + rejected_items


def _convert(
    rows: Iterable[T], convert: Callable[[T], Message], where: Callable[[T], str]
) -> tuple[list[Message], list[Rejected]]:
    messages, rejected = [], []
    for row in rows:
        try:
            messages.append(convert(row))
        except (ValueError, OverflowError) as error:  # OverflowError: absurd timestamps
            rejected.append(Rejected(where(row), _reason(error)))
    return messages, rejected


def _reason(error: Exception) -> str:
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'message'}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
    return str(error)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--events", type=Path, metavar="PATH", help="JSONL file of BehaviorEvent messages (or .gz)"
    )
    source.add_argument(
        "--dataset",
        choices=DATASETS,
        help="a dataset read with --path, or demo: the generated demo world (drifting users)",
    )
    parser.add_argument(
        "--path",
        type=Path,
        nargs="+",
        help="the dataset: the folder of movielens, mind or letter, the reviews and metadata "
        "of amazon",
    )
    parser.add_argument(
        "--catalog",
        type=Path,
        nargs="?",
        const=True,
        metavar="PATH",
        help="first send items to the catalog topic: a JSONL file of ItemUpsert/ItemDeletion, "
        "or, given without PATH, the items of --dataset",
    )
    parser.add_argument(
        "--rate",
        type=non_negative(float),
        default=0.0,
        metavar="EVENTS_PER_SECOND",
        help="send events on a fixed schedule at this rate; 0 is as fast as possible (default 0)",
    )
    parser.add_argument(
        "--limit", type=non_negative(int), metavar="N", help="send only the first N events"
    )


def run(args: argparse.Namespace) -> int:
    """Send; 0 when every record was delivered, 1 on Kafka errors, 2 on unusable input."""
    if args.dataset not in (None, "demo") and not args.path:
        return _fail(f"--dataset {args.dataset} needs --path", 2)
    if args.events and args.catalog is True:
        return _fail("--catalog needs a PATH with --events (only datasets carry items)", 2)
    try:
        events, catalog, rejected = _load(args)
    except (OSError, ValueError, KeyError, TypeError, SyntaxError) as error:
        # model.data's loaders stop at the first row of a dataset file they cannot parse
        return _fail(f"cannot read the input: {error!r}", 2)
    _report(rejected)
    events = events[: args.limit]

    quiet_kafka_logs()
    settings = Settings.from_env()
    items, delivery = _Delivery(), _Delivery()
    settings.cluster.check()  # a refused connection ends here, with its cause
    try:
        ensure_topics(settings)
        producer = settings.cluster.producer(
            client_id="currents-produce",
            acks="all",
            linger_ms=LINGER_MS,
        )
        try:
            if catalog:
                _send(producer, settings.catalog_topic, catalog, lambda item: item.item_id, items)
                print(f"sent {items.delivered} items to {settings.catalog_topic}")
            producer.partitions_for(settings.events_topic)  # metadata now, not in the timing
            start = time.monotonic()
            stream = tqdm(paced(events, args.rate), total=len(events), unit="event", disable=None)
            try:
                _send(producer, settings.events_topic, stream, lambda e: e.user_id, delivery)
            except KeyboardInterrupt:
                print("interrupted: flushing what was sent", file=sys.stderr)
                producer.flush()
        finally:
            producer.close()
    except KafkaError as error:
        return _fail(f"Kafka at {settings.bootstrap}: {error!r}", 1)

    elapsed = time.monotonic() - start
    print(
        f"sent {delivery.delivered} events to {settings.events_topic} in {elapsed:.1f} s "
        f"({delivery.delivered / max(elapsed, 1e-9):.0f} events/s); "
        f"skipped {len(rejected)} bad rows"
    )
    failed = items.failed + delivery.failed
    if failed:
        return _fail(f"{len(failed)} records not delivered, first: {failed[0]!r}", 1)
    return 0


def send_erasures(settings: Settings, user_ids: list[str]) -> None:
    """Send one `UserErasure` per user to the events topic, keyed by the user: ordered with the
    user's events, so the owning worker forgets the user after the events sent before it. Raises
    ValidationError for an id the schemas refuse, KafkaError when one is not delivered."""
    now = datetime.now(UTC)
    erasures = [UserErasure(op="forget", user_id=user, requested_at=now) for user in user_ids]
    ensure_topics(settings, only=[settings.events_topic])
    producer = settings.cluster.producer(client_id="currents-forget", acks="all")
    try:
        sent = [
            producer.send(settings.events_topic, key=e.user_id.encode(),
                          value=e.model_dump_json().encode())
            for e in erasures
        ]  # fmt: skip
        producer.flush()
        for future in sent:
            future.get(timeout=30)
    finally:
        producer.close()


def _load(args: argparse.Namespace) -> tuple[list, list, list[Rejected]]:
    """Events, the catalog to send first (maybe none), and every rejected row."""
    if args.events:
        events, rejected = read_jsonl(args.events, decode_event)
        dataset_catalog = []
    else:
        events, dataset_catalog, rejected = dataset_messages(args.dataset, args.path or [])
    if args.catalog is None:
        return events, [], rejected
    if args.catalog is True:  # a bare --catalog
        return events, dataset_catalog, rejected
    catalog, rejected_items = read_jsonl(args.catalog, decode_catalog)
    return events, catalog, rejected + rejected_items


def _send(
    producer: KafkaProducer,
    topic: str,
    messages: Iterable[BehaviorEvent | ItemUpsert | ItemDeletion],
    key_of: Callable,
    delivery: _Delivery,
) -> None:
    for message in messages:
        value = message.model_dump_json().encode()
        future = producer.send(topic, key=key_of(message).encode(), value=value)
        future.add_errback(delivery.failed.append)
        delivery.sent += 1
    producer.flush()


def _report(rejected: list[Rejected]) -> None:
    if not rejected:
        return
    print(f"skipping {len(rejected)} bad rows:", file=sys.stderr)
    for row in rejected[:REPORTED_REJECTS]:
        print(f"  {row.where}: {row.reason}", file=sys.stderr)
    if len(rejected) > REPORTED_REJECTS:
        print(f"  ... and {len(rejected) - REPORTED_REJECTS} more", file=sys.stderr)


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
