"""The worker's state and steps: what each agent, timer and page of stream/app.py calls.

A batch of events goes: by partition -> resume point and holes filled (stream/progress.py) ->
admitted (or dead-lettered) -> one engine step (stream/engine.py) -> user records written to
the state table, updates published -> progress recorded once Kafka has acknowledged all of it.
Faust's private API is reached only through stream/faust_compat.py.
"""

import asyncio
import gc
import hmac
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import faust
import torch
from aiokafka.errors import IllegalStateError
from pydantic import SecretStr

from model.checkpoint import Checkpoint, load_checkpoint
from model.encoder import ItemEncoder, item_text
from schemas import ErrorKind, InvalidMessage, ItemDeletion, decode_catalog
from stream.engine import Engine, Incoming
from stream.faust_compat import create_worker as faust_worker
from stream.faust_compat import (
    fetch_min_bytes,
    in_partition_of,
    partition_event,
    publish_batches,
    set_fetch_min_bytes,
    steady,
    tables_restored,
)
from stream.items import (
    ItemMatrix,
    catalog_backlog_encoded,
    encode_upserts,
    follow_item_vectors,
    text_digest,
)
from stream.metrics import Metrics
from stream.outages import (
    EXIT_FATAL,
    BrokerUnavailable,
    BrokerWatch,
    metadata_probe,
    patiently,
)
from stream.page import InterestHistory, render_user_page
from stream.progress import HoleReader, LostTails, Progress, span
from stream.records import Record, dead_letter
from stream.settings import Settings
from stream.topics import ensure_changelog_topics

__all__ = ["Bounds", "Worker", "bearer_authorized", "create_worker", "load_model"]

log = logging.getLogger(__name__)


class Bounds(Protocol):
    """A replay's range of the events topic (stream/replay.py); a live worker has none."""

    per_event: bool  # one update per event, not one per user and batch

    def end(self, partition: int) -> int | None:
        """The offset to stop before in `partition`; None: no end."""

    def advance(self, offsets: Mapping[int, int]) -> None:
        """Every event before these offsets (per partition) is processed."""

    def tick(self) -> None:
        """Called twice a second: show the progress; stop the worker at the end."""


def load_model(settings: Settings) -> Checkpoint:
    """The checkpoint the worker serves; raises ValueError when none is configured."""
    if settings.checkpoint is None:
        raise ValueError("no model checkpoint: set CURRENTS_CHECKPOINT (see `currents train`)")
    torch.set_num_threads(settings.torch_threads)
    return load_checkpoint(settings.checkpoint, settings.device)


def create_worker(
    app: faust.App, settings: Settings, loglevel: str, quiet: bool = False
) -> faust.Worker:
    """The Faust worker process for `app`, its table changelogs created first (see
    ensure_changelog_topics)."""
    names = [table.changelog_topic.get_topic_name() for table in app.tables.values()]
    ensure_changelog_topics(settings, names)
    return faust_worker(app, loglevel=loglevel, quiet=quiet)


class _ProgressTable:
    """The progress table as `Progress` stores into it: partition and offset as text."""

    def __init__(self, table: faust.Table):
        self.table = table

    def get(self, partition: int) -> int | None:
        stored = self.table.get(str(partition).encode())
        return None if stored is None else int(stored)

    def set(self, partition: int, offset: int, context: object) -> None:
        with in_partition_of(context):
            self.table[str(partition).encode()] = str(offset).encode()


class Worker:
    """One worker process: its model, item matrix, progress and Kafka outputs."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        checkpoint: Checkpoint,
        *,
        user_states: faust.Table,
        progress: faust.Table,
        dead_letters: faust.TopicT,
        item_vectors: faust.TopicT,
        bounds: Bounds | None = None,
    ):
        self.app, self.settings, self.checkpoint, self.bounds = app, settings, checkpoint, bounds
        self.user_states = user_states
        self.dead_letters, self.item_vectors = dead_letters, item_vectors
        self.items = ItemMatrix(
            checkpoint.model.item_representations, checkpoint.item_index,
            checkpoint.encoder_name, settings.device,
        )  # fmt: skip
        self.engine = Engine(
            checkpoint, self.items, settings.top_n, settings.top_categories,
            per_event=bounds is not None and bounds.per_event, prequential=bounds is not None,
        )  # fmt: skip
        self.metrics = Metrics()
        self.history = InterestHistory()  # each user's recent interests, for the user's page
        self.items_loaded = asyncio.Event()  # the item vectors present at start are in the matrix
        self.items_ready = asyncio.Event()  # ... and so is the catalog backlog present at start
        # A GPU steps while the event loop goes on reading events; on CPU a second thread would
        # only contend with the loop for the GIL (docs/benchmarks.md), so the step runs on the loop.
        on_cpu = torch.device(settings.device).type == "cpu"
        self.model_thread = None if on_cpu else ThreadPoolExecutor(1, "currents-model")
        self.encoder_thread = ThreadPoolExecutor(1, "currents-encoder")
        self.repair_thread = ThreadPoolExecutor(1, "currents-repair")  # blocking Kafka reads
        self.progress = Progress(_ProgressTable(progress))
        self.lost_tails = LostTails()
        self.in_batch = False  # processing a batch: its next offsets are about to move
        self.inflow_bytes, self.inflow_since = 0, time.monotonic()  # taken since fetches were sized
        self._hole_reader: HoleReader | None = None  # made in the repair thread on first use
        self._encoder: ItemEncoder | None = None  # made in the encoder thread (SQLite cache)
        self._published: dict[str, bytes] = {}  # digests this worker sent, before it reads them
        self.broker_watch = BrokerWatch(settings.outage_budget, metadata_probe(settings.cluster))

    # --- items --------------------------------------------------------------------------------

    async def follow_items(self) -> None:
        """Keep the item matrix equal to the item-vectors topic (stream/items.py)."""
        loop = asyncio.get_running_loop()
        settings = self.settings
        what, budget = "the item-vector follower", settings.outage_budget
        try:
            encoded = await loop.run_in_executor(
                None, patiently, lambda: catalog_backlog_encoded(
                    settings.cluster, settings.app_id, settings.catalog_topic
                ), what, budget,
            )  # fmt: skip

            async def catalog_encoded() -> bool:
                if self.bounds is not None:
                    return True  # a replay scores against the catalog as the live workers have it
                await asyncio.sleep(0.5)  # the catalog agent commits every commit_interval
                return await loop.run_in_executor(None, patiently, encoded, what, budget)

            await follow_item_vectors(
                settings.cluster, settings.item_vectors_topic, self.items,
                self.items_loaded, catalog_encoded, self.items_ready, budget,
            )  # fmt: skip
        except Exception:
            # e.g. vectors from another encoder than the checkpoint's: nothing can be scored
            exit_fatal("the item matrix cannot follow the item-vectors topic")

    async def encode_catalog(self, batch: list) -> None:
        """Encode new or changed items once and publish their vectors for every worker."""
        await self.items_loaded.wait()
        changes = {}  # item id -> the last upsert or deletion of the batch
        for event in batch:
            try:
                message = decode_catalog(event.value)
                if event.key != message.item_id.encode():
                    raise InvalidMessage(
                        ErrorKind.KEY_MISMATCH, "catalog records must be keyed by item_id"
                    )
            except InvalidMessage as error:
                await self.reject(error, self.settings.catalog_topic, _record(event))
                continue
            changes[message.item_id] = message
        upserts = [
            m
            for m in changes.values()
            if not isinstance(m, ItemDeletion)
            and self._published.get(m.item_id, self.items.digest_of(m.item_id))
            != text_digest(item_text(m.item_id, m.title, m.description, m.categories))
        ]
        if upserts:  # the encoder loads on first use: not for a catalog already encoded
            loop = asyncio.get_running_loop()
            for vector in await loop.run_in_executor(self.encoder_thread, self._encode, upserts):
                await self.item_vectors.send(key=vector.item_id.encode(), value=vector.to_bytes())
                self._published[vector.item_id] = vector.digest
            self.metrics.items_encoded.inc(len(upserts))
        for message in changes.values():
            if isinstance(message, ItemDeletion):
                await self.item_vectors.send(key=message.item_id.encode(), value=None)
                self._published.pop(message.item_id, None)

    def _encode(self, upserts):
        if self._encoder is None:
            self._encoder = ItemEncoder(self.checkpoint.encoder_name, self.settings.encoder_cache)
        return encode_upserts(self._encoder, upserts)

    # --- events -------------------------------------------------------------------------------

    async def process_batches(self, batches: AsyncIterator[list[Record]]) -> None:
        """Process every batch as it comes; anything failing here ends the process (without
        the batch counting as processed)."""
        # No batch is taken before the items are ready: a batch taken holds a revocation back
        # (faust_compat.BulkDelivery), and the items may wait for the catalog agent, which a
        # revocation stops.
        await self.items_ready.wait()
        freeze_startup_objects()
        try:
            async for batch in batches:
                await self.process_batch(batch)
        except Exception:
            exit_fatal("the events batcher failed")

    async def process_batch(self, batch: list[Record]) -> None:
        """Process a micro-batch of events-topic records; on a failure that is not the input's
        (that is dead-lettered), end the process before the batch counts as processed, so that
        a restarted worker processes it again."""
        self.in_batch = True
        try:
            await self._process(batch)
        except Exception:
            exit_fatal("a batch failed; exiting so that it is redelivered")
        self.in_batch = False

    async def _process(self, batch: list) -> None:
        self.progress.confirm()
        generation = self.progress.generation
        self.metrics.batch_events.observe(len(batch))
        partitions = self._by_partition(batch)
        ends = {}  # partition -> the next offset expected after the batch
        for partition, (context, records) in partitions.items():
            records, ends[partition] = await self._fill_holes(partition, context, records)
            partitions[partition] = (context, records)  # the range to process, holes filled
        sends = {partition: [] for partition in partitions}  # what each partition produced
        # An admitted event holds its item's row in the matrix: no catalog change until the
        # batch has been stepped and ranked, or a deleted item's row could be another's.
        async with self.items.lock:
            admitted = await self._admit(partitions, sends)
            if admitted:
                contexts = {partition: context for partition, (context, _) in partitions.items()}
                await self._apply(admitted, sends, contexts)
        processed = {p: (ends[p], context, sends[p]) for p, (context, _) in partitions.items()}
        # revoked meanwhile: nothing is recorded, the next owner starts from the progress table
        if self.progress.record(generation, processed) and self.bounds is not None:
            self.bounds.advance(ends)

    def _by_partition(self, batch: list[Record]) -> dict[int, tuple[object, list[Record]]]:
        """Partition -> (what its table writes name as their event, its records in offset
        order)."""
        partitions: dict[int, tuple[object, list[Record]]] = {}
        topic = self.settings.events_topic
        for record in batch:
            self.inflow_bytes += len(record.value or b"")
            partition = record.partition
            if partition not in partitions:
                partitions[partition] = (partition_event(topic, partition), [])
            partitions[partition][1].append(record)
        for partition, (_, records) in partitions.items():
            self.progress.delivered(partition, records[-1].offset)
        return partitions

    async def _fill_holes(
        self, partition: int, context: object, records: list[Record]
    ) -> tuple[list[Record], int]:
        """The partition's records from its resume point (read from Kafka where Faust skipped
        some), up to the replay's end if any; and the next offset expected after them."""
        loop = asyncio.get_running_loop()
        expected = await self.progress.resume_point(partition, context, self._committed)
        end = None if self.bounds is None else self.bounds.end(partition)
        missing, after = span(expected, [r.offset for r in records], end)
        if end is not None:
            records = [r for r in records if r.offset < end]  # past the end: not replayed
        for start, stop in missing:
            log.warning(
                "events partition %d: reading skipped offsets %d-%d", partition, start, stop - 1
            )
            filled = await loop.run_in_executor(
                self.repair_thread, self._read_range, partition, start, stop
            )
            self.metrics.repaired.inc(len(filled))
            records.extend(filled)
        records.sort(key=lambda r: r.offset)
        return records, after

    async def _admit(self, partitions: dict, sends: dict[int, list]) -> list[Incoming]:
        """Every valid record of the batch; the others are dead-lettered."""
        admitted = []
        for partition, (_, records) in partitions.items():
            for record in records:
                try:
                    admitted.append(
                        self.engine.admit(
                            record.key, record.value, record.partition, record.offset,
                            record.timestamp,
                        )
                    )  # fmt: skip
                except InvalidMessage as error:
                    rejected = await self.reject(error, self.settings.events_topic, record)
                    sends[partition].append(rejected)
        return admitted

    async def _apply(
        self, admitted: list[Incoming], sends: dict[int, list], contexts: dict[int, object]
    ) -> None:
        """Step and rank a batch (the caller holds the item matrix's lock), then store and
        publish its outcomes; their sends join their partition's."""
        users = dict.fromkeys(i.event.user_id for i in admitted)  # one read per user
        stored = {user: self.user_states.get(user.encode()) for user in users}
        started = time.perf_counter()
        if self.model_thread is None:
            outcomes = self.engine.apply(stored, admitted)
        else:
            loop = asyncio.get_running_loop()
            outcomes = await loop.run_in_executor(
                self.model_thread, self.engine.apply, stored, admitted
            )
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        updates = []
        for outcome in outcomes:
            user = outcome.user_id.encode()
            with in_partition_of(contexts[outcome.last.partition]):
                if outcome.forgotten and user in self.user_states:
                    del self.user_states[user]  # from the store, and a changelog tombstone
                if outcome.record is not None:
                    self.user_states[user] = outcome.record
            sends[outcome.last.partition] += self.user_states.take_sends()  # its changelog record
            if outcome.forgotten:  # downstream and compacted copies drop theirs
                updates.append((user, None))
                self.metrics.erasures.inc()
            updates += [(user, update) for update in outcome.updates]
            if outcome.updates:
                latency = time.time() - outcome.last.appended_at
                self.metrics.update_latency.observe(max(0.0, latency))
            self.metrics.events.inc(outcome.applied)
            if outcome.applied:
                self.history.record(outcome.user_id, time.time(), outcome.interests)
        # Faust's per-message path costs three times as much per record (faust_compat.py)
        delivered = await publish_batches(self.app, self.settings.updates_topic, updates)
        for produced in sends.values():  # progress of the batch's partitions waits for them
            produced += delivered
        self.metrics.updates.inc(len(updates))

    async def reject(self, error: InvalidMessage, topic: str, record: Record) -> asyncio.Future:
        """Dead-letter a record; return the send's future (done once Kafka has the record)."""
        # Faust acks a record even when the body raises: reject it here, explicitly.
        self.metrics.dead_letters.labels(error.kind.value).inc()
        return await self.dead_letters.send(
            key=record.key,
            value=dead_letter(
                error, record.key, record.value, topic, record.partition, record.offset
            ),
        )

    # Both run in the repair thread, which owns the (blocking, kafka-python) HoleReader; both
    # wait out a broker outage (stream/outages.py).
    async def _committed(self, partition: int) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.repair_thread, self._patiently, lambda: self._reader().start(partition)
        )

    def _read_range(self, partition: int, start: int, end: int) -> list[Record]:
        return self._patiently(lambda: self._reader().read(partition, start, end))

    def _patiently(self, call):
        return patiently(call, "the hole reader", self.settings.outage_budget)

    def _reader(self) -> HoleReader:
        if self._hole_reader is None:
            settings = self.settings
            self._hole_reader = HoleReader(
                settings.cluster, settings.events_topic, settings.app_id,
                patience=min(30.0, settings.outage_budget),
            )  # fmt: skip
        return self._hole_reader

    async def watch_broker(self) -> None:
        """Every few seconds: end the worker once Kafka has not answered for longer than the
        outage budget (Faust's consumer and producer would wait for it forever)."""
        try:
            await self.broker_watch.check()
        except BrokerUnavailable:
            exit_fatal("Kafka is unavailable")

    # --- progress, the consumer, rebalances ---------------------------------------------------

    def confirm_progress(self) -> None:
        """Store the progress of the batches Kafka has acknowledged (the last batch before a
        pause waits for no next batch); a failed output ends the process."""
        try:
            self.progress.confirm()
        except Exception:
            exit_fatal("an output was not written; exiting so that it is redelivered")

    def size_fetches(self) -> None:
        """Size the next fetches to the inflow since the last call (stream/faust_compat.py)."""
        now = time.monotonic()
        rate = self.inflow_bytes / (now - self.inflow_since)
        set_fetch_min_bytes(self.app, fetch_min_bytes(rate))
        self.inflow_bytes, self.inflow_since = 0, now

    async def refetch_lost_tails(self) -> None:
        """Faust can drop the records it fetched as its recovery ends (stream/progress.py). A
        later record reveals the hole, but a partition's last records wait for one forever:
        ask Faust to fetch them again."""
        if self.in_batch or not steady(self.app) or not self.items_ready.is_set():
            return
        consumer = self.app.consumer
        for tp in consumer.assignment():
            if tp.topic != self.settings.events_topic:
                continue
            expected = self.progress.position(tp.partition)
            if expected is None:
                continue
            try:
                fetched = await consumer.position(tp)
                if fetched is not None and self.lost_tails.check(tp.partition, expected, fetched):
                    log.warning(
                        "events partition %d: offsets %d-%d were fetched but never delivered; "
                        "fetching them again", tp.partition, expected, fetched - 1,
                    )  # fmt: skip
                    await consumer.seek(tp, expected)
            except IllegalStateError:  # revoked meanwhile: its next owner checks it
                return

    def on_revoke(self, revoked) -> None:
        """Faust has just flushed the producer: record what it acknowledged. Another worker may
        process these partitions now; if they come back, the progress table (restored by
        Faust) says where to resume."""
        self.confirm_progress()
        events_topic = self.settings.events_topic
        self.progress.revoke([tp.partition for tp in revoked if tp.topic == events_topic])
        self.lost_tails.forget()

    async def on_shutdown(self) -> None:
        """A clean stop should not leave the last batches to be processed again at the next
        start."""
        sends = self.progress.unconfirmed()
        try:
            if sends:
                await asyncio.wait(sends, timeout=10.0)
            self.progress.confirm()
        except Exception:
            log.exception("progress of the last batches not recorded; they will be redone")

    # --- web views ----------------------------------------------------------------------------

    async def interests(self, user_id: str) -> dict | None:
        """The user's current view, from the state table; None for a user with no events."""
        stored = self.user_states.get(user_id.encode())
        if stored is None:
            return None
        async with self.items.lock:
            view = self.engine.describe(stored)
        return {"user_id": user_id, "model_version": self.checkpoint.version, **view}

    async def page(self, user_id: str) -> str | None:
        """The user's live page (stream/page.py); None for a user with no events."""
        view = await self.interests(user_id)
        if view is None:
            return None
        shown = {r["item_id"] for r in view["recommendations"]}
        shown |= {b["item_id"] for r in view["recommendations"] for b in r.get("because") or ()}
        titles = {}
        for item_id in shown:
            row = self.items.rows.get(item_id)
            if row is not None:
                titles[item_id] = self.items.items[row].title
        return render_user_page(view, self.history.of(user_id), titles)

    def refusal(self, web, request, needed: bool = True):
        """A 401 response for a request without the bearer token (when one is set), else None.
        A request routed to the owning worker carries the caller's headers and is checked
        there too."""
        auth = request.headers.get("Authorization")
        if not needed or bearer_authorized(auth, self.settings.web_token):
            return None
        return web.json(
            {"error": "this page needs the bearer token (Authorization: Bearer ...)"},
            status=401, headers={"WWW-Authenticate": 'Bearer realm="currents"'},
        )  # fmt: skip

    def item(self, item_id: str) -> dict | None:
        """This worker's own view of an item: whether it can be recommended here."""
        row = self.items.rows.get(item_id)
        if row is None:
            return None
        vector = self.items.items[row]
        return {"item_id": item_id, "title": vector.title, "categories": list(vector.categories)}

    def health(self) -> dict:
        # Faust pauses the streams while it restores the tables from their changelogs (at
        # start and after a rebalance): a worker restoring would serve stale interests.
        restored = tables_restored(self.app)
        return {
            "status": "ok",
            "ready": self.items_ready.is_set() and restored,
            "tables_restored": restored,
            "items": len(self.items),
            "model_version": self.checkpoint.version,
        }

    def render_metrics(self) -> bytes:
        """Prometheus text, with the lag of this worker's partitions: only where both ends are
        known, as a revoked partition's last value would add to its new owner's in a sum."""
        self.metrics.lag.clear()
        for tp in self.app.consumer.assignment():
            if tp.topic != self.settings.events_topic:
                continue
            try:
                end = self.app.consumer.highwater(tp)  # None until the partition's first fetch
            except (AssertionError, AttributeError):  # revoked meanwhile
                continue
            done = self.progress.position(tp.partition)
            if end is not None and done is not None:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, end - done))
        self.metrics.items.set(len(self.items))
        return self.metrics.render()


def bearer_authorized(header: str | None, token: SecretStr | None) -> bool:
    """Whether an Authorization header carries `token` (any header does when there is none).
    Compared in constant time: how long a wrong guess takes says nothing of the token."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    expected = token.get_secret_value().encode()
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)


def _record(event) -> Record:
    message = event.message
    return Record(event.key, event.value, message.partition, message.offset, message.timestamp)


def freeze_startup_objects() -> None:
    """Exempt everything allocated so far (modules, model, Faust's services, the item matrix)
    from garbage collection: it lives as long as the worker, and scanning it made each full
    collection a pause of 300 ms in the middle of a batch."""
    gc.collect()  # what startup left behind goes now, not frozen with the rest
    gc.freeze()


def exit_fatal(message: str) -> None:
    """Log the current exception and end the process at once: no ack, no commit, no cleanup
    that could mark unprocessed events as done. The supervisor (systemd, Kubernetes) restarts
    the worker, which resumes from the last commit. A broker outage past the budget is one line:
    its cause is known, and a traceback would only bury it."""
    error = sys.exc_info()[1]
    while error is not None and not isinstance(error, BrokerUnavailable):
        error = error.__cause__ or error.__context__
    if error is not None:
        log.critical("%s; exiting with code %d for a supervisor to restart", error, EXIT_FATAL)
    else:
        log.critical(message, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_FATAL)
