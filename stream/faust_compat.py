"""Every use of Faust's and aiokafka's private API, in one place, for the versions below only.

The worker needs a few things Faust 0.15 does not offer:

- **The events topic in bulk** (`BulkDelivery`). Faust hands an agent one record at a time:
  a message object, the conductor, a stream queue, the stream's iteration, an event, an ack and
  its sensors: about 55 us of a busy worker's time per record (docs/benchmarks.md). The events
  topic's records are taken out of each fetch instead, and the worker takes them in batches;
  Faust still keeps the group, the assignment, recovery and the table changelogs, and commits
  what the worker reports processed.
- **Table writes from a micro-batch** (`in_partition_of`). Faust picks the changelog partition
  and RocksDB store of a write from the event being processed, a context variable its stream
  iteration sets (faust #497); a batch's writes name their partition instead.
- **Acknowledged changelog sends** (`AckedTable`): the futures of a table's changelog records,
  so that progress is recorded only once Kafka has them.
- **Raw batch publish** (`publish_batches`): appending to aiokafka's record batches costs a
  third of Faust's per-message path per record (11 against 34 us of CPU); a replay publishes one
  update per event.
- **Partition metadata** (`load_partition_metadata`) for Faust's request router.
- **Consumer costs Faust's settings do not reach** (`tune_consumer`, `set_fetch_min_bytes`):
  - *Fetch wait.* Faust hard-codes aiokafka's `fetch_max_wait_ms=1500`, and aiokafka keeps one
    fetch in flight per broker, for the partitions whose records the worker has consumed. When
    it goes out while the busy events partitions still have records buffered, it asks only for
    quiet ones (the catalog's) and the broker holds it for its whole wait; the busy partitions,
    drained meanwhile, cannot be fetched until it returns. Under a steady load those stalls fed
    on themselves: seconds of latency at half the worker's capacity (docs/benchmarks.md).
  - *Fetch size.* aiokafka asks the broker to answer a fetch as soon as it has one byte: under a
    steady load every fetch carries a handful of records, and each costs the consumer thread a
    request to encode, a response to decode and a hand-over to the event loop. The fetch's
    minimum size follows the inflow instead: about `FETCH_FILL_SECONDS` of it, so a quiet stream
    is still answered at once, and a busy one in fewer, fuller fetches (`fetch_min_bytes`). The
    fill is a latency budget spent to save CPU: in bench/throughput.py, 30 ms of inflow against
    10 ran the paced worker at 64-82 % of a core instead of 81-97 %, with p99 43-83 ms in
    twelve runs (docs/benchmarks.md).
  - *Delivery.* Faust hands every record to the streams with
    `wait_first(callback(record), suspend_flow.wait())`, four tasks per record, so that a
    rebalance can abandon a delivery that blocks on a full stream buffer. Nearly every delivery
    completes without blocking: here it starts at once, in the consumer's task, and only one
    that blocks goes on under `wait_first`, with the same outcome. A third of the live worker's
    CPU per event went to those tasks (docs/benchmarks.md).
- **No terminal spinner** (`create_worker`) and **recovery state** (`tables_restored`,
  `steady`).
- **A connection probe** (`probe_broker`): Kafka clients retry a refused connection until their
  timeout and then say only "unable to bootstrap"; one aiokafka connection and one metadata
  request say at once whether TLS, SASL or the network failed (stream/connection.py).
- **Paced metadata retries** (`pace_failed_metadata_updates`): aiokafka retried a failed
  metadata update at once, thousands of times a second while a broker was away.
- **A bounded stop** (`create_worker`): Faust's stop can wait forever (for in-flight events
  while Kafka is away, for a thread encoding the catalog); a signal's stop ends the process
  within `STOP_DEADLINE` seconds.

Importing this module checks the installed versions: another faust or aiokafka may have moved
any of these internals, so it refuses to run on one it was not tested with.
"""

import asyncio
import collections
import functools
import importlib.metadata
import logging
import os
import re
import signal
import threading
import types
import weakref
from collections.abc import Coroutine, Generator, Iterator
from contextlib import contextmanager

import faust
import faust.streams
from aiokafka.client import AIOKafkaClient
from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP
from mode.services import WaitResults
from mode.utils.futures import notify

from stream.records import Record

__all__ = [
    "FETCH_MAX_WAIT_MS",
    "STOP_DEADLINE",
    "SUPPORTED",
    "AckedTable",
    "BulkDelivery",
    "UnsupportedVersion",
    "check_versions",
    "create_worker",
    "eager_wait_first",
    "fetch_min_bytes",
    "in_partition_of",
    "load_partition_metadata",
    "partition_event",
    "probe_broker",
    "pace_failed_metadata_updates",
    "publish_batches",
    "set_fetch_min_bytes",
    "steady",
    "tables_restored",
    "tune_consumer",
]

# distribution -> [lowest supported, first unsupported): keep in step with pyproject.toml
SUPPORTED = {"faust-streaming": ((0, 15, 3), (0, 16)), "aiokafka": ((0, 13), (0, 15))}
FETCH_MAX_WAIT_MS = 50  # how long the broker may hold a fetch that finds no new record
FETCH_FILL_SECONDS = 0.03  # under a steady load, a fetch waits for about this much inflow
FETCH_MIN_BYTES_CAP = 1 << 16  # far below a fetch's maximum (1 MiB a partition)


class UnsupportedVersion(ImportError):
    """An installed faust or aiokafka whose internals this module was not written for."""


def check_versions(installed=importlib.metadata.version) -> None:
    """Raise UnsupportedVersion unless every distribution in SUPPORTED is in its range."""
    for name, (low, high) in SUPPORTED.items():
        version = installed(name)
        parsed = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
        if not low <= parsed < high:
            raise UnsupportedVersion(
                f"stream/faust_compat.py supports {name} >={_dotted(low)},<{_dotted(high)}; "
                f"{version} is installed"
            )


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


check_versions()


# --- tables ---------------------------------------------------------------------------------


class AckedTable(faust.Table):
    """A Faust table that can hand over the futures of its changelog sends (when tracking).

    A future is done once Kafka has acknowledged the changelog record; only then is the write
    safe from a crash (stream/progress.py).
    """

    _sends: list | None = None

    def track_sends(self) -> None:
        self._sends = []

    def take_sends(self) -> list:
        """The futures of the changelog records sent since the last call."""
        sends = self._sends or []
        if self._sends is not None:
            self._sends = []
        return sends

    def send_changelog(self, *args, **kwargs):
        future = super().send_changelog(*args, **kwargs)
        if self._sends is not None:
            self._sends.append(future)
        return future


class _PartitionEvent:
    """What a table write needs of the event being processed: its message's topic and
    partition."""

    __slots__ = ("message", "__weakref__")

    def __init__(self, topic: str, partition: int):
        tp = TP(topic, partition)
        self.message = types.SimpleNamespace(topic=topic, partition=partition, tp=tp)


@functools.cache
def partition_event(topic: str, partition: int) -> _PartitionEvent:
    """The stand-in event of `topic`'s `partition` for `in_partition_of` (cached: it must
    outlive the weak reference Faust keeps)."""
    return _PartitionEvent(topic, partition)


@contextmanager
def in_partition_of(event) -> Iterator[None]:
    """Let a table write made for a micro-batch go to `event`'s partition (a Faust event, or a
    `partition_event`): its changelog, recovery and partition store are then exactly those of a
    per-event write. tests/integration checks the changelog and restore behaviour."""
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


def tables_restored(app: faust.App) -> bool:
    """The tables are restored from their changelogs (streams run again)."""
    recovery = app.tables.recovery
    return recovery.completed.is_set() and not recovery.in_recovery


def steady(app: faust.App) -> bool:
    """Restored and not rebalancing: the consumer's positions mean what they say."""
    return tables_restored(app) and not app.rebalancing


# --- producing ------------------------------------------------------------------------------

_partitioner = DefaultPartitioner()  # Kafka's: murmur2 of the key, as Java clients hash it


@functools.lru_cache(maxsize=1 << 16)
def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key`; cached: murmur2 is pure Python
    in aiokafka (2 us a key), and a replay publishes an update per event of the same users."""
    every = list(range(partitions))
    return _partitioner(key, every, every)


async def publish_batches(app: faust.App, topic: str, records: list[tuple[bytes, bytes]]) -> list:
    """Send (key, value) records straight to Kafka, one record batch per partition of `topic`,
    keyed as Kafka's default partitioner does; returns the delivery futures."""
    producer = app.producer._ensure_producer()
    count = len(await producer.partitions_for(topic))
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in records:
        by_partition.setdefault(key_partition(key, count), []).append((key, value))
    delivered = []
    for partition, batch_records in by_partition.items():
        batch = producer.create_batch()
        for key, value in batch_records:
            if batch.append(key=key, value=value, timestamp=None) is None:  # batch full
                delivered.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        delivered.append(await producer.send_batch(batch, topic, partition=partition))
    return delivered


async def load_partition_metadata(app: faust.App, table) -> None:
    """Make sure the producer knows the partitions of `table`'s changelog.

    Faust's request router hashes the key with the producer's metadata, which only holds
    topics the producer has written to: a freshly restored worker would fail every routed
    request. Asking for the partitions is a no-op once they are known.
    """
    await app.producer._ensure_producer().partitions_for(table.changelog_topic.get_topic_name())


# --- connecting ------------------------------------------------------------------------------


async def probe_broker(host: str, port: int, options: dict, timeout: float) -> None:
    """Connect to one broker with aiokafka's options (TLS, SASL) and ask for metadata, which
    needs an authenticated connection; raises what went wrong (ssl.SSLError, aiokafka's
    SaslAuthenticationFailed, KafkaConnectionError, OSError, TimeoutError)."""
    from aiokafka.conn import create_conn
    from aiokafka.protocol.metadata import MetadataRequest

    async with asyncio.timeout(timeout):
        conn = await create_conn(
            host, port, client_id="currents-probe", request_timeout_ms=int(timeout * 1000),
            **options,
        )  # fmt: skip
        try:
            await conn.send(MetadataRequest([]))
        finally:
            conn.close()


# --- the worker -----------------------------------------------------------------------------


def create_worker(app: faust.App, loglevel: str, quiet: bool = False) -> faust.Worker:
    """A Faust worker without its terminal spinner (to spin on every log line, it sets the root
    logger to DEBUG, and every library then formats every debug line, aiokafka one per message
    produced: 4-6 % of a busy worker's time), and whose stop on SIGTERM or SIGINT is bounded."""
    pace_failed_metadata_updates()
    worker = _BoundedStopWorker(app, loglevel=loglevel, quiet=quiet)
    worker.spinner = None
    return worker


METADATA_RETRY_SECONDS = 0.5  # between metadata requests while no broker answers


def pace_failed_metadata_updates() -> None:
    """Make every aiokafka client wait between failed metadata updates (idempotent).

    While no broker answers, aiokafka's producer sender (partitions without a leader) and
    fetcher (invalid metadata) each ask for a metadata update and wait for it in a loop, and a
    failed update answers at once: two loops spinning, thousands of connection attempts and
    error lines a second for as long as the outage lasts. A failed update now returns after
    `METADATA_RETRY_SECONDS`, which paces every such loop; a successful one is not delayed."""
    if getattr(AIOKafkaClient._metadata_update, "paced", False):
        return
    update = AIOKafkaClient._metadata_update

    @functools.wraps(update)
    async def paced(self, cluster_metadata, topics):
        updated = await update(self, cluster_metadata, topics)
        if not updated:
            await asyncio.sleep(METADATA_RETRY_SECONDS)
        return updated

    paced.paced = True
    AIOKafkaClient._metadata_update = paced


STOP_DEADLINE = 20.0  # seconds a stop may take before the process ends regardless
EXIT_STOP_OVERDUE = 128 + signal.SIGTERM  # as if the signal had ended it


class _BoundedStopWorker(faust.Worker):
    """A stop asked for by a signal ends the process within STOP_DEADLINE seconds.

    Faust's stop can wait without bound: for in-flight events to be acked (`wait_empty`) while
    Kafka is away, for the consumer's last commit, or (at the interpreter's exit) for a thread
    still encoding a catalog. Ending the process then loses nothing: progress is recorded only
    for outputs Kafka has acknowledged (stream/progress.py), and the rest is processed again at
    the next start."""

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        if not self._signal_stop_time:
            timer = threading.Timer(STOP_DEADLINE, _stop_overdue, (signal.name,))
            timer.daemon = True
            timer.start()
        super()._schedule_shutdown(signal)


def _stop_overdue(name: str) -> None:
    logging.getLogger(__name__).critical(
        "%s: the stop did not finish within %.0f s; ending the process (exit code %d)",
        name, STOP_DEADLINE, EXIT_STOP_OVERDUE,
    )  # fmt: skip
    logging.shutdown()
    os._exit(EXIT_STOP_OVERDUE)


# --- the consumer ---------------------------------------------------------------------------


def tune_consumer(app: faust.App) -> None:
    """Shorten the fetch wait and start deliveries eagerly (idempotent: at every assignment)."""
    consumer = app.consumer
    fetcher = _fetcher(app)
    if fetcher is None:
        raise RuntimeError("the consumer has not started: tune it once partitions are assigned")
    if not all(hasattr(fetcher, name) for name in ("_fetch_max_wait_ms", "_fetch_min_bytes")):
        raise RuntimeError("aiokafka's fetcher has changed: fetches cannot be tuned")
    fetcher._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
    if "wait_first" not in vars(consumer):
        consumer.wait_first = eager_wait_first(consumer)


def fetch_min_bytes(inflow_bytes_per_second: float) -> int:
    """The least a fetch should bring back for an inflow of records this fast: about
    `FETCH_FILL_SECONDS` of it. A fetch never waits longer than `FETCH_MAX_WAIT_MS` for it,
    should the inflow stop."""
    wanted = int(inflow_bytes_per_second * FETCH_FILL_SECONDS)
    return max(1, min(FETCH_MIN_BYTES_CAP, wanted))


def set_fetch_min_bytes(app: faust.App, size: int) -> None:
    """Ask the broker to hold the next fetches until it has `size` bytes (or the fetch wait
    is over). A no-op until the consumer has started."""
    fetcher = _fetcher(app)
    if fetcher is not None:
        fetcher._fetch_min_bytes = size


def _fetcher(app: faust.App):
    """The aiokafka fetcher under Faust's consumer thread; None until the consumer has started
    (Faust creates the aiokafka consumer first, and aiokafka its fetcher at start)."""
    aiokafka_consumer = getattr(app.consumer._thread, "_consumer", None)
    return getattr(aiokafka_consumer, "_fetcher", None)


def eager_wait_first(service):
    """`service.wait_first`, except that a first argument that is a delivery (a coroutine of
    `service.callback`) runs at once in the caller's task. If it completes without waiting, its
    result is returned as `wait_first` would; if it waits, it goes on under `wait_first`, which
    cancels it when another argument (the flow's suspension) or the service's stop comes first."""
    wait_first = service.wait_first

    async def first_of(*coros, timeout=None) -> WaitResults:
        delivery = coros[0] if coros else None
        if not (
            isinstance(delivery, types.CoroutineType)
            and delivery.cr_code is getattr(service.callback, "__code__", None)
        ):
            return await wait_first(*coros, timeout=timeout)
        try:
            waiting_on = delivery.send(None)
        except StopIteration as done:
            _close(coros[1:])
            return WaitResults([delivery], [done.value], False)
        except BaseException:
            _close(coros[1:])
            raise
        return await wait_first(_Resumed(delivery, waiting_on), *coros[1:], timeout=timeout)

    return first_of


class _Resumed:
    """Await a coroutine that has already run up to its first wait (on `waiting_on`)."""

    def __init__(self, coro: Coroutine, waiting_on):
        self._coro, self._waiting_on = coro, waiting_on

    def __await__(self) -> Generator:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as thrown:  # a cancellation, say: the coroutine handles it
                try:
                    waiting_on = coro.throw(thrown)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration as done:
                    return done.value


def _close(coros) -> None:
    """Close coroutines that will not run (no 'never awaited' warning)."""
    for coro in coros:
        if isinstance(coro, types.CoroutineType):
            coro.close()


# --- the events topic in bulk ---------------------------------------------------------------


class BulkDelivery:
    """The records of one topic, taken out of each fetch and buffered for the worker in bulk.

    Faust's consumer returns each fetch as a map of partitions to records; those of `topic` are
    moved here before Faust makes messages of them, and the rest go on through Faust. What
    Faust's path does for a record, this one does for the topic:

    - *subscription*: the topic is registered with Faust's conductor, as an agent iterating it
      would register it;
    - *backpressure*: while `max_buffered` records wait here, the topic's partitions are left
      out of the fetches (aiokafka then fetches no more of them), and the other topics' records
      go on: the worker may be waiting for the catalog's. With no other partition to fetch, the
      fetch loop waits for room, unless a rebalance stops the flow;
    - *rebalances*: records fetched in an earlier consumer generation are dropped (Faust seeks
      every partition back to its committed offset, and the worker's progress fills any hole),
      none is taken while the flow is stopped, and a batch being processed holds the
      revocation back until it is done, as a message not yet acked would (`wait_empty`);
    - *commits*: Faust commits, at its interval and at a stop, the offset after the last record
      the worker reported processed (`processed`), for each partition of the topic. (At a
      revocation, Faust forgets the revoked partitions' offsets before it commits, as it does
      its own acks: their next owner resumes from the worker's progress table.)
    """

    def __init__(self, app: faust.App, topic: faust.TopicT, max_buffered: int):
        self.app, self.max_buffered = app, max_buffered
        self.topic = topic.get_topic_name()
        self.buffered = 0  # records in `chunks`
        self.arrived = asyncio.Event()  # set whenever records are buffered
        self._room = asyncio.Event()
        self._room.set()
        self._chunks: collections.deque = collections.deque()  # (generation, [Record]), one tp
        self._delivered: dict[TP, int] = {}  # the offset after the last record buffered
        self._processed: dict[TP, int] = {}  # the offset after the last record processed
        self._in_flight: _BatchInFlight | None = None
        app.topics.add(topic)

    def install(self) -> None:
        """Divert the topic's records from Faust's consumer and commit its offsets from
        `processed` (idempotent: called at every assignment; the consumer exists by then)."""
        consumer = self.app.consumer
        if "_getmany" in vars(consumer):
            return
        getmany, new_offset = consumer._getmany, consumer._new_offset

        async def fetch(active_partitions, timeout):
            # Faust's set of active partitions is its own (pausing and resuming change it in
            # place): the fetch gets a filtered copy, never Faust a different set
            if self.buffered >= self.max_buffered and active_partitions:
                others = {tp for tp in active_partitions if tp.topic != self.topic}
                if others:
                    active_partitions = others  # the others go on
                else:
                    await self._wait_for_room(consumer)  # nothing else to fetch meanwhile
            records = await getmany(active_partitions=active_partitions, timeout=timeout)
            if records:
                self._divert(records)
            return records

        def offset_to_commit(tp: TP) -> int | None:
            if tp.topic == self.topic:
                return self._processed.get(tp)
            return new_offset(tp)

        consumer._getmany = fetch
        consumer._new_offset = offset_to_commit

    def _divert(self, records: dict) -> None:
        generation = self.app.consumer_generation_id
        for tp in [tp for tp in records if tp.topic == self.topic]:
            fetched = records.pop(tp)
            if not fetched:
                continue
            chunk = [
                Record(r.key, r.value, r.partition, r.offset, r.timestamp / 1000) for r in fetched
            ]
            self._chunks.append((generation, chunk))
            self._delivered[tp] = chunk[-1].offset + 1
            self.buffered += len(chunk)
            self.arrived.set()

    async def _wait_for_room(self, consumer) -> None:
        self._room.clear()
        waits = [asyncio.ensure_future(e.wait()) for e in (self._room, consumer.suspend_flow)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def ready(self) -> None:
        """Wait until records of the current generation are buffered and the flow runs."""
        consumer = self.app.consumer
        while True:
            if not consumer.flow_active:
                await consumer.can_resume_flow.wait()
            self._drop_stale()
            if self.buffered:
                return
            self.arrived.clear()
            await self.arrived.wait()

    def _drop_stale(self) -> None:
        generation = self.app.consumer_generation_id
        while self._chunks and self._chunks[0][0] != generation:
            self.buffered -= len(self._chunks.popleft()[1])
        self._note_room()

    def _note_room(self) -> None:
        if self.buffered < self.max_buffered:
            self._room.set()  # a fetch waiting for room goes on

    def in_kafka(self) -> dict[TP, int]:
        """The high watermark of each partition records were buffered from: what Kafka holds
        of it now."""
        ends = {}
        for tp in self._delivered:
            try:
                end = self.app.consumer.highwater(tp)
            except (AssertionError, AttributeError):  # revoked meanwhile
                continue
            if end is not None:
                ends[tp] = end
        return ends

    def undelivered(self, ends: dict[TP, int]) -> int:
        """How many of the records below `ends` have not been buffered yet."""
        return sum(max(0, end - self._delivered.get(tp, end)) for tp, end in ends.items())

    def take(self, max_size: int) -> list[Record]:
        """Up to `max_size` records, oldest first (each partition's in offset order), none while
        a rebalance has stopped the flow; the batch holds any revocation back until `finished`."""
        self._drop_stale()
        batch: list[Record] = []
        in_flight = _BatchInFlight(self.app.consumer_generation_id)
        while self._chunks and len(batch) < max_size and self.app.consumer.flow_active:
            generation, chunk = self._chunks[0]
            taken = chunk[: max_size - len(batch)]  # one partition's, in offset order
            batch += taken
            in_flight.taken(TP(self.topic, taken[-1].partition), taken[-1].offset + 1)
            if len(taken) < len(chunk):
                self._chunks[0] = (generation, chunk[len(taken) :])
            else:
                self._chunks.popleft()
        self.buffered -= len(batch)
        self._note_room()
        self._in_flight = in_flight
        self.app.consumer._unacked_messages.add(in_flight)
        return batch

    def processed(self) -> None:
        """Note the batch taken last as processed: Faust commits past it from now on."""
        in_flight = self._in_flight
        if in_flight is None or in_flight.generation != self.app.consumer_generation_id:
            return  # a rebalance came: the partitions start again from their committed offsets
        acked = self.app.consumer._acked
        for tp, end in in_flight.ends.items():
            self._processed[tp] = max(self._processed.get(tp, 0), end)
            acked[tp]  # noqa: B018 -- Faust's commit goes over the partitions in its ack map

    def finished(self) -> None:
        """The batch taken last is done with (processed or not): a revocation may go on."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.acked = True
            consumer = self.app.consumer
            consumer._unacked_messages.discard(in_flight)
            notify(consumer._waiting_for_ack)

    def revoke(self, revoked) -> None:
        """Forget revoked partitions: their next owner commits them."""
        for tp in revoked:
            self._processed.pop(tp, None)
            self._delivered.pop(tp, None)


class _BatchInFlight:
    """Stands in Faust's set of unacked messages for a batch being processed: a revocation
    waits until it is acked."""

    refcount = 1  # Faust's wait_empty logs it

    def __init__(self, generation: int):
        self.generation, self.acked = generation, False
        self.ends: dict[TP, int] = {}  # per partition, the offset after the records taken

    def taken(self, tp: TP, end: int) -> None:
        # a seek can bring records again: the largest end counts
        self.ends[tp] = max(self.ends.get(tp, 0), end)
