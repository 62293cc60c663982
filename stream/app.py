"""The Currents Faust app: its topics, table, agents and web views in one place.

catalog ──encode_catalog──▶ item-vectors ──(every worker follows)──▶ item matrix
events ──update_interests──▶ user-states table (RocksDB + changelog) ──▶ interest updates
                 └──────────▶ dead letters (with the reason)
"""

import asyncio
import functools
import gc
import logging
import os
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import faust
import faust.streams
import torch
from aiokafka.errors import IllegalStateError
from aiokafka.partitioner import DefaultPartitioner
from tqdm import tqdm

from model.checkpoint import load_checkpoint
from model.encoder import ItemEncoder, item_text
from schemas import ErrorKind, InvalidMessage, ItemDeletion, decode_catalog
from stream.batching import ready_batches
from stream.consumer import fetch_min_bytes, set_fetch_min_bytes, tune_consumer
from stream.engine import Engine
from stream.items import (
    ItemMatrix,
    catalog_backlog_encoded,
    encode_upserts,
    follow_item_vectors,
    text_digest,
)
from stream.metrics import Metrics
from stream.progress import HoleReader, LostTails, Record, holes
from stream.records import dead_letter
from stream.replay import ReplayPlan, stop_when_complete
from stream.settings import Settings
from stream.topics import ensure_changelog_topics, state_tables

__all__ = ["create_app", "create_worker"]

log = logging.getLogger(__name__)
EXIT_FATAL = 70  # a batch failed for a reason that is not its input: exit before it is acked
partitioner = DefaultPartitioner()  # Kafka's: murmur2 of the key, as Java clients hash it


@functools.lru_cache(maxsize=1 << 16)
def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key`; cached: murmur2 is pure Python
    in aiokafka (2 us a key), and a replay publishes an update per event of the same users."""
    every = list(range(partitions))
    return partitioner(key, every, every)


def create_app(settings: Settings, replay: ReplayPlan | None = None) -> faust.App:
    """The live worker's app; with `replay`, the same app bounded to a range of the events
    topic, putting each event's prequential rank on its update (stream/replay.py)."""
    if settings.checkpoint is None:
        raise ValueError("no model checkpoint: set CURRENTS_CHECKPOINT (see `currents train`)")
    torch.set_num_threads(settings.torch_threads)
    checkpoint = load_checkpoint(settings.checkpoint, settings.device)
    items = ItemMatrix(
        checkpoint.model.item_representations, checkpoint.item_index,
        checkpoint.encoder_name, settings.device,
    )  # fmt: skip
    engine = Engine(
        checkpoint, items, settings.top_n, settings.top_categories,
        per_event=replay is not None and replay.per_event, prequential=replay is not None,
    )  # fmt: skip
    metrics = Metrics()
    items_loaded = asyncio.Event()  # the item vectors present at start are in the matrix
    items_ready = asyncio.Event()  # ... and so is the catalog backlog present at start
    # A GPU steps while the event loop goes on reading events; on CPU a second thread would only
    # contend with the loop for the GIL (docs/benchmarks.md), so the step runs on the loop.
    on_cpu = torch.device(settings.device).type == "cpu"
    model_thread = None if on_cpu else ThreadPoolExecutor(1, "currents-model")
    encoder_thread = ThreadPoolExecutor(1, "currents-encoder")
    repair_thread = ThreadPoolExecutor(1, "currents-repair")  # blocking Kafka reads
    next_offsets: dict[int, int] = {}  # events partition -> next offset to process (lag)
    # Events partition -> next offset expected, while this worker keeps the partition. The
    # progress table lags behind it: see confirm_progress.
    expected_next: dict[int, int] = {}
    # Events partition -> batches, in order, whose progress waits for Kafka to acknowledge what
    # they produced: (next offset after the batch, an event of the batch, its sends).
    unconfirmed: dict[int, list[tuple[int, object, list]]] = {}
    assignment = [0]  # bumped on every revocation: a batch that straddles one records nothing
    in_batch = [False]  # the agent is processing a batch (its next offsets are about to move)
    lost_tails = LostTails()
    inflow = [0, time.monotonic()]  # bytes of events taken since, and when, fetches were sized

    app = faust.App(
        settings.app_id,
        broker=settings.broker_url,
        store="rocksdb://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_commit_interval=settings.commit_interval,
        broker_session_timeout=settings.session_timeout,
        broker_heartbeat_interval=min(3.0, settings.session_timeout / 10),
        # No standby replicas: Faust 0.15 clears its changelog queue whenever flow resumes, and
        # standby records queued then are lost for good (their read offset has moved on), so a
        # standby promoted at a rebalance served missing or stale user states. A partition
        # that moves is restored from its changelog instead, with the streams paused.
        table_standby_replicas=0,
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_enabled=replay is None,  # a replay is driven from its command line
        # A replay publishes one update per event: fewer, larger produce requests.
        producer_linger=0.01 if replay else 0.0,
        producer_max_batch_size=(1 << 18) if replay else 16384,
        web_bind=settings.web_bind,
        canonical_url=f"http://{settings.web_host}:{settings.web_port}",
        # Faust's own /table and /router pages expose raw table contents: off.
        web_tables_enabled=False,
        web_router_enabled=False,
        Table=_AckedTable,
    )

    # Raw bytes everywhere: decoding happens inside the agents, where a bad record can be
    # dead-lettered instead of crashing the stream.
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    events = app.topic(settings.events_topic, **raw)
    catalog = app.topic(settings.catalog_topic, **raw)
    item_vectors = app.topic(settings.item_vectors_topic, **raw)
    dead_letters = app.topic(settings.dead_letter_topic, **raw)

    user_states_table, progress_table = state_tables(checkpoint.version)
    user_states = app.Table(
        user_states_table,
        key_type=bytes,  # the UTF-8 user id, as in the events topic key: same partitioning
        value_type=bytes,  # stream.records.UserRecord
        options={"driver": "rocksdict"},
        help="Per user: LSTM + attention state and the events it has applied.",
    )
    user_states.track_sends()

    # Per events partition, the offset below which every event's outputs (user record, update,
    # dead letter) are acknowledged by Kafka. Written only after those acknowledgements, so
    # after a crash, whichever of its local or changelog values Faust restores, and whichever
    # user records its recovery rolls back to their changelog version, no event below it lacks
    # its effect; everything from it on is processed again (idempotently).
    progress = app.Table(
        progress_table,
        key_type=bytes,  # the partition number, as text
        value_type=bytes,  # the next offset, as text
        options={"driver": "rocksdict"},
        help="Per events partition: the offset below which all outputs are in Kafka.",
    )
    reader = []  # a HoleReader, made in the repair thread on first use

    async def reject(error: InvalidMessage, topic: str, record: Record) -> asyncio.Future:
        """Dead-letter a record; return the send's future (done once Kafka has the record)."""
        # Faust acks a record even when the body raises: reject it here, explicitly.
        metrics.dead_letters.labels(error.kind.value).inc()
        return await dead_letters.send(
            key=record.key,
            value=dead_letter(
                error, record.key, record.value, topic, record.partition, record.offset
            ),
        )

    @app.task
    async def follow_items():
        loop = asyncio.get_running_loop()
        try:
            encoded = await loop.run_in_executor(
                None,
                catalog_backlog_encoded,
                settings.bootstrap,
                settings.app_id,
                settings.catalog_topic,
            )

            async def catalog_encoded() -> bool:
                if replay is not None:
                    return True  # a replay scores against the catalog as the live workers have it
                await asyncio.sleep(0.5)  # the catalog agent commits every commit_interval
                return await loop.run_in_executor(None, encoded)

            await follow_item_vectors(
                settings.bootstrap, settings.item_vectors_topic, items,
                items_loaded, catalog_encoded, items_ready,
            )  # fmt: skip
        except Exception:
            # e.g. vectors from another encoder than the checkpoint's: nothing can be scored
            _exit_fatal("the item matrix cannot follow the item-vectors topic")

    @app.task
    async def freeze_startup_objects():
        """Once ready, exempt everything allocated so far (modules, model, Faust's services, the
        item matrix) from garbage collection: it lives as long as the worker, and scanning it
        made each full collection a pause of 300 ms in the middle of a batch."""
        await items_ready.wait()
        gc.collect()  # what startup left behind goes now, not frozen with the rest
        gc.freeze()

    encoder = []  # created in the encoder thread on first use (SQLite cache is per thread)
    published: dict[str, bytes] = {}  # text digests this worker sent, before it reads them back

    def encode(upserts):
        if not encoder:
            encoder.append(ItemEncoder(checkpoint.encoder_name, settings.encoder_cache))
        return encode_upserts(encoder[0], upserts)

    async def encode_catalog(stream):
        """Encode new or changed items once and publish their vectors for every worker."""
        async for batch in stream.take_events(64, 1.0):
            await items_loaded.wait()
            changes = {}  # item id -> the last upsert or deletion of the batch
            for event in batch:
                try:
                    message = decode_catalog(event.value)
                    if event.key != message.item_id.encode():
                        raise InvalidMessage(
                            ErrorKind.KEY_MISMATCH, "catalog records must be keyed by item_id"
                        )
                except InvalidMessage as error:
                    await reject(error, settings.catalog_topic, _record(event))
                    continue
                changes[message.item_id] = message
            upserts = [
                m
                for m in changes.values()
                if not isinstance(m, ItemDeletion)
                and published.get(m.item_id, items.digest_of(m.item_id))
                != text_digest(item_text(m.item_id, m.title, m.description, m.categories))
            ]
            if upserts:  # the encoder loads on first use: not for a catalog already encoded
                loop = asyncio.get_running_loop()
                for vector in await loop.run_in_executor(encoder_thread, encode, upserts):
                    await item_vectors.send(key=vector.item_id.encode(), value=vector.to_bytes())
                    published[vector.item_id] = vector.digest
                metrics.items_encoded.inc(len(upserts))
            for message in changes.values():
                if isinstance(message, ItemDeletion):
                    await item_vectors.send(key=message.item_id.encode(), value=None)
                    published.pop(message.item_id, None)

    if replay is None:  # only live workers encode the catalog
        app.agent(catalog, name="encode_catalog")(encode_catalog)

    @app.agent(events)
    async def update_interests(stream):
        """Micro-batches across users: one batched model step, one record and update per user."""
        async for batch in ready_batches(stream, settings.batch_size, settings.batch_window):
            await items_ready.wait()
            in_batch[0] = True
            try:
                await process(batch)
            except Exception:
                # Not the input's fault (that is dead-lettered): stop before the batch is acked,
                # so a restarted worker processes it again.
                _exit_fatal("a batch failed; exiting so that it is redelivered")
            in_batch[0] = False

    async def process(batch) -> None:
        confirm_progress()
        generation = assignment[0]
        metrics.batch_events.observe(len(batch))
        partitions = {}  # partition -> (an event of it, its records in offset order)
        for event in batch:
            record = _record(event)
            inflow[0] += len(record.value or b"")
            partitions.setdefault(record.partition, (event, []))[1].append(record)
            next_offsets[record.partition] = record.offset + 1
        loop = asyncio.get_running_loop()
        admitted, next_expected = [], {}
        sends = {partition: [] for partition in partitions}  # what each partition produced
        for partition, (context, records) in partitions.items():
            expected = expected_next.get(partition)
            if expected is None:  # first batch since the partition was assigned
                expected = await restart_offset(partition, context)
            offsets = [r.offset for r in records]
            end = replay.until.get(partition) if replay and replay.until else None
            if end is not None and offsets[-1] >= end:
                records = [r for r in records if r.offset < end]  # past the end: not replayed
                offsets = [*(r.offset for r in records), end]  # ... but all before it is
            missing, after = holes(expected, offsets)
            if end is not None:
                after = max(expected, min(after, end))
            for start, end in missing:
                log.warning(
                    "events partition %d: reading skipped offsets %d-%d", partition, start, end - 1
                )
                filled = await loop.run_in_executor(
                    repair_thread, read_range, partition, start, end
                )
                metrics.repaired.inc(len(filled))
                records.extend(filled)
            records.sort(key=lambda r: r.offset)
            partitions[partition] = (context, records)  # the range to process, holes filled
            next_expected[partition] = after
        # An admitted event holds its item's row in the matrix: no catalog change until the
        # batch has been stepped and ranked, or a deleted item's row could be another's.
        async with items.lock:
            for partition, (context, records) in partitions.items():
                for record in records:
                    try:
                        admitted.append(
                            engine.admit(
                                record.key, record.value, record.partition, record.offset,
                                record.timestamp, source=context,
                            )
                        )  # fmt: skip
                    except InvalidMessage as error:
                        sends[partition].append(await reject(error, settings.events_topic, record))
            if admitted:
                await apply(admitted, sends)
        if assignment[0] != generation:
            return  # revoked meanwhile: the next owner starts from the progress table
        for partition, (context, _) in partitions.items():
            expected_next[partition] = next_expected[partition]
            unconfirmed.setdefault(partition, []).append(
                (next_expected[partition], context, sends[partition])
            )
        if replay is not None:
            replay.processed.update(next_expected)

    def stored_progress(partition: int) -> int | None:
        """The progress table's offset for `partition`; None if this model version never
        processed it."""
        stored = progress.get(str(partition).encode())
        return None if stored is None else int(stored)

    async def restart_offset(partition: int, context) -> int:
        """Where a newly assigned partition resumes: the progress table, else (never processed
        by this model version) the group's committed offset, recorded at once as progress."""
        stored = stored_progress(partition)
        if stored is not None:
            return stored
        loop = asyncio.get_running_loop()
        start = await loop.run_in_executor(repair_thread, start_offset, partition)
        with _in_partition_of(context):
            progress[str(partition).encode()] = str(start).encode()
        return start

    def confirm_progress() -> None:
        """Advance each partition's progress past the batches whose sends Kafka acknowledged.

        Faust writes a table value to RocksDB at once and to its changelog later, and its
        recovery replays the changelog over newer local values; it also flushes the producer
        before committing offsets only on a best-effort basis. So neither a locally written
        progress value nor the committed offset proves a user record is durable. An
        acknowledged changelog record is: recovery restores that version or a later one.
        """
        for partition, waiting in unconfirmed.items():
            confirmed = None
            while waiting and all(send.done() for send in waiting[0][2]):
                confirmed, context, done = waiting.pop(0)
                for send in done:
                    if send.cancelled() or send.exception() is not None:
                        raise RuntimeError(
                            f"an output of events partition {partition} was not written"
                        )
            if confirmed is not None:
                with _in_partition_of(context):
                    progress[str(partition).encode()] = str(confirmed).encode()

    @app.timer(1.0)
    async def confirm_progress_when_idle():
        try:
            confirm_progress()  # the last batch before a pause waits for no next batch
        except Exception:
            _exit_fatal("an output was not written; exiting so that it is redelivered")

    @app.timer(1.0)
    async def size_fetches_to_inflow():
        now = time.monotonic()
        set_fetch_min_bytes(app, fetch_min_bytes(inflow[0] / (now - inflow[1])))
        inflow[:] = [0, now]

    @app.timer(1.0)
    async def refetch_lost_tails():
        """Faust can drop the records it fetched as its recovery ends (stream/progress.py). A
        later record reveals the hole, but a partition's last records wait for one forever:
        ask Faust to fetch them again."""
        recovery = app.tables.recovery
        steady = recovery.completed.is_set() and not (recovery.in_recovery or app.rebalancing)
        if in_batch[0] or not steady or not items_ready.is_set():
            return
        for tp in app.consumer.assignment():
            if tp.topic != settings.events_topic:
                continue
            expected = next_offsets.get(tp.partition)
            if expected is None:  # nothing delivered since the partition was assigned
                expected = stored_progress(tp.partition)
            if expected is None:
                continue
            try:
                fetched = await app.consumer.position(tp)
                if fetched is not None and lost_tails.check(tp.partition, expected, fetched):
                    log.warning(
                        "events partition %d: offsets %d-%d were fetched but never delivered; "
                        "fetching them again", tp.partition, expected, fetched - 1,
                    )  # fmt: skip
                    await app.consumer.seek(tp, expected)
            except IllegalStateError:  # revoked meanwhile: its next owner checks it
                return

    @app.on_partitions_assigned.connect
    async def fetch_and_deliver_promptly(sender, assigned, **kwargs) -> None:
        tune_consumer(app)

    @app.on_partitions_revoked.connect
    async def forget_positions(sender, revoked, **kwargs) -> None:
        # Faust has just flushed the producer: record what it acknowledged. Another worker may
        # process these partitions now; if they come back, the progress table (restored by
        # Faust) says where to resume.
        try:
            confirm_progress()
        except Exception:
            _exit_fatal("an output was not written; exiting so that it is redelivered")
        assignment[0] += 1
        for tp in revoked:
            if tp.topic == settings.events_topic:
                expected_next.pop(tp.partition, None)
                unconfirmed.pop(tp.partition, None)
                next_offsets.pop(tp.partition, None)
        lost_tails.forget()

    @app.on_before_shutdown.connect
    async def confirm_before_shutdown(sender, **kwargs) -> None:
        # A clean stop should not leave the last batches to be processed again at the next start.
        sends = [send for waiting in unconfirmed.values() for *_, done in waiting for send in done]
        try:
            if sends:
                await asyncio.wait(sends, timeout=10.0)
            confirm_progress()
        except Exception:
            log.exception("progress of the last batches not recorded; they will be redone")

    async def apply(admitted, sends: dict[int, list]) -> None:
        """Step and rank a batch (the caller holds the item matrix's lock), then store and
        publish its outcomes."""
        users = dict.fromkeys(i.event.user_id for i in admitted)  # one read per user
        stored = {user: user_states.get(user.encode()) for user in users}
        started = time.perf_counter()
        if model_thread is None:
            outcomes = engine.apply(stored, admitted)
        else:
            loop = asyncio.get_running_loop()
            outcomes = await loop.run_in_executor(model_thread, engine.apply, stored, admitted)
        metrics.step_seconds.observe(time.perf_counter() - started)
        updates = []
        for outcome in outcomes:
            user = outcome.user_id.encode()
            with _in_partition_of(outcome.last.source):
                user_states[user] = outcome.record
            sends[outcome.last.partition] += user_states.take_sends()  # its changelog record
            updates += [(user, update) for update in outcome.updates]
            metrics.update_latency.observe(max(0.0, time.time() - outcome.last.appended_at))
            metrics.events.inc(outcome.applied)
        delivered = await publish(updates)
        for produced in sends.values():  # progress of the batch's partitions waits for them
            produced += delivered
        metrics.updates.inc(len(updates))

    async def publish(updates: list[tuple[bytes, bytes]]) -> list[asyncio.Future]:
        """Send (user, update) records straight to Kafka, one record batch per partition of
        the updates topic, keyed as Kafka's default partitioner does. Faust's per-message path
        and even aiokafka's `send` cost more per record than appending to a batch (34 against
        11 us of CPU; a replay publishes one update per event). Returns the delivery futures:
        progress waits for them (confirm_progress)."""
        producer = app.producer._ensure_producer()
        topic = settings.updates_topic
        count = len(await producer.partitions_for(topic))
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in updates:
            by_partition.setdefault(key_partition(key, count), []).append((key, value))
        delivered = []
        for partition, records in by_partition.items():
            batch = producer.create_batch()
            for key, value in records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # batch full
                    delivered.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            delivered.append(await producer.send_batch(batch, topic, partition=partition))
        return delivered

    # Both run in the repair thread, which owns the (blocking, kafka-python) HoleReader.
    def start_offset(partition: int) -> int:
        return hole_reader().start(partition)

    def read_range(partition: int, start: int, end: int) -> list[Record]:
        return hole_reader().read(partition, start, end)

    def hole_reader() -> HoleReader:
        if not reader:
            reader.append(HoleReader(settings.bootstrap, settings.events_topic, settings.app_id))
        return reader[0]

    if replay is not None:
        bar = tqdm(total=replay.total, unit="ev", desc="replay", smoothing=0.1, dynamic_ncols=True)

        @app.timer(0.5)
        async def replay_progress():
            stop_when_complete(replay, bar)

    @app.table_route(table=user_states, match_info="user_id")
    async def routed_interests(web, request, user_id: str):
        stored = user_states.get(user_id.encode())
        if stored is None:
            return web.json({"error": f"no events for user {user_id!r}"}, status=404)
        async with items.lock:
            view = engine.describe(stored)
        return web.json({"user_id": user_id, "model_version": checkpoint.version, **view})

    @app.page("/users/{user_id}/interests")
    async def user_interests(web, request, user_id: str):
        await _load_partition_metadata(app, user_states)
        return await routed_interests(web, request, user_id=user_id)

    @app.page("/items/{item_id}")
    async def item(web, request, item_id: str):
        """This worker's own view of an item: whether it can be recommended here."""
        row = items.rows.get(item_id)
        if row is None:
            return web.json(
                {"error": f"item {item_id!r} is not in this worker's matrix"}, status=404
            )
        vector = items.items[row]
        return web.json(
            {"item_id": item_id, "title": vector.title, "categories": list(vector.categories)}
        )

    @app.page("/health")
    async def health(web, request):
        # Faust pauses the streams while it restores the tables from their changelogs (at
        # start and after a rebalance): a worker restoring would serve stale interests.
        recovery = app.tables.recovery
        restored = recovery.completed.is_set() and not recovery.in_recovery
        return web.json(
            {
                "status": "ok",
                "ready": items_ready.is_set() and restored,
                "tables_restored": restored,
                "items": len(items),
                "model_version": checkpoint.version,
            }
        )

    @app.page("/metrics")
    async def prometheus(web, request):
        # Only this worker's partitions, and only where both ends are known: a revoked
        # partition's last value would add to its new owner's in a sum over workers.
        metrics.lag.clear()
        for tp in app.consumer.assignment():
            if tp.topic != settings.events_topic:
                continue
            try:
                end = app.consumer.highwater(tp)  # None until the partition's first fetch
            except (AssertionError, AttributeError):  # revoked meanwhile
                continue
            done = next_offsets.get(tp.partition)
            if done is None:  # nothing delivered since the partition was assigned
                done = stored_progress(tp.partition)
            if end is not None and done is not None:
                metrics.lag.labels(str(tp.partition)).set(max(0, end - done))
        metrics.items.set(len(items))
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    return app


def create_worker(
    app: faust.App, settings: Settings, loglevel: str, quiet: bool = False
) -> faust.Worker:
    """A Faust worker for `app`, with the app's table changelogs created first (see
    ensure_changelog_topics), and without Faust's terminal spinner: to spin on every log line,
    it sets the root logger to DEBUG, and every library then formats every debug line (aiokafka
    one per message produced), 4-6 % of a busy worker's time."""
    names = [table.changelog_topic.get_topic_name() for table in app.tables.values()]
    ensure_changelog_topics(settings, names)
    worker = faust.Worker(app, loglevel=loglevel, quiet=quiet)
    worker.spinner = None
    return worker


def _record(event) -> Record:
    message = event.message
    return Record(event.key, event.value, message.partition, message.offset, message.timestamp)


def _exit_fatal(message: str) -> None:
    """Log the current exception and end the process at once: no ack, no commit, no cleanup
    that could mark unprocessed events as done. The supervisor (systemd, Kubernetes) restarts
    the worker, which resumes from the last commit."""
    log.critical(message, exc_info=True)
    logging.shutdown()
    os._exit(EXIT_FATAL)


class _AckedTable(faust.Table):
    """A Faust table that can hand over the futures of its changelog sends (when tracking).

    A future is done once Kafka has acknowledged the changelog record; only then is the write
    safe from a crash (see `confirm_progress` in create_app).
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


@contextmanager
def _in_partition_of(event):
    """Let a table write made for a micro-batch go to `event`'s partition.

    Faust picks the changelog partition and RocksDB store of a write from the event being
    processed, a context variable that its stream iteration sets in the task that iterates
    (the batcher's drainer, as in `take_events`), not in the agent's (faust #497). Setting it
    to the user's last event keeps the changelog, recovery and partition stores exactly as for
    a per-event write. Private Faust API: faust is pinned to 0.15.x and tests/integration
    checks the changelog and restore behaviour.
    """
    token = faust.streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust.streams._current_event.reset(token)


async def _load_partition_metadata(app: faust.App, table) -> None:
    """Make sure the producer knows the partitions of `table`'s changelog.

    Faust's request router hashes the key with the producer's metadata, which only holds
    topics the producer has written to: a freshly restored worker would fail every routed
    request. Asking for the partitions is a no-op once they are known.
    """
    await app.producer._ensure_producer().partitions_for(table.changelog_topic.get_topic_name())
