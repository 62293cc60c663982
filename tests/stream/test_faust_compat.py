"""stream/faust_compat.py: eager delivery keeps `wait_first`'s outcomes without its tasks,
fetches are sized to the inflow, unsupported versions are refused, and the worker has no
spinner. These tests reach into Faust's private API, as the module does.

A plain mode Service stands in for Faust's consumer: a `callback` that delivers a record and a
flow that a rebalance suspends, as `Consumer._drain_messages` uses them.
"""

import asyncio
import collections
import gc
import importlib.metadata
import importlib.util
import logging
import re
import tomllib
import types
import warnings
import weakref
from pathlib import Path

import faust
import faust.streams
import pytest
from faust.types import TP
from mode import Service
from mode.utils.locks import Event

import stream.faust_compat
from stream.faust_compat import (
    FETCH_FILL_SECONDS,
    FETCH_MIN_BYTES_CAP,
    BulkDelivery,
    UnsupportedVersion,
    check_versions,
    create_worker,
    eager_wait_first,
    fetch_min_bytes,
    in_partition_of,
    partition_event,
    set_fetch_min_bytes,
    tune_consumer,
)


class Consumer(Service):
    def __init__(self, callback):
        super().__init__()
        self.callback = callback
        self.suspend_flow = Event()
        self.wait_first = eager_wait_first(self)


def deliver(consumer: Consumer, record):
    """What Faust's drain loop awaits for every record."""
    return consumer.wait_first(consumer.callback(record), consumer.suspend_flow.wait())


def run(test):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(test())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_a_delivery_that_does_not_wait_runs_in_the_callers_task():
    async def test():
        tasks = []

        async def on_message(record):
            tasks.append(asyncio.current_task())
            return record * 2

        consumer = Consumer(on_message)
        results = await deliver(consumer, 21)
        assert tasks == [asyncio.current_task()]  # no task made for it
        assert results.results == [42] and not results.stopped

    run(test)


def test_a_delivery_that_waits_goes_on_to_its_end():
    async def test():
        steps = []
        room = asyncio.get_running_loop().create_future()

        async def on_message(record):
            steps.append(("started", asyncio.current_task()))
            steps.append(("put", await room))  # a full stream buffer, say
            return record

        consumer = Consumer(on_message)
        asyncio.get_running_loop().call_later(0.01, room.set_result, "space")
        results = await deliver(consumer, "record")
        assert steps == [("started", asyncio.current_task()), ("put", "space")]
        assert results.results == ["record"]

    run(test)


def test_a_suspended_flow_abandons_a_blocked_delivery_as_faust_does():
    async def test():
        ended = []

        async def on_message(record):
            try:
                await asyncio.get_running_loop().create_future()  # never room
            except asyncio.CancelledError:
                ended.append("cancelled")
                raise

        consumer = Consumer(on_message)
        asyncio.get_running_loop().call_later(0.01, consumer.suspend_flow.set)
        results = await asyncio.wait_for(deliver(consumer, "record"), 5)
        assert results.results == [True]  # the suspension's wait won, not the delivery
        await asyncio.sleep(0)
        assert ended == ["cancelled"]

    run(test)


@pytest.mark.parametrize("waits", [False, True])
def test_a_delivery_error_reaches_the_drain_loop(waits):
    async def test():
        async def on_message(record):
            if waits:
                await asyncio.sleep(0.001)
            raise ValueError(record)

        with pytest.raises(ValueError, match="bad"):
            await deliver(Consumer(on_message), "bad")

    run(test)


def test_other_waits_are_left_to_wait_first():
    async def test():
        tasks = []

        async def on_message(record):
            return record

        async def something_else():
            tasks.append(asyncio.current_task())
            return "done"

        consumer = Consumer(on_message)
        results = await consumer.wait_first(something_else(), consumer.suspend_flow.wait())
        assert results.results == ["done"]
        assert tasks and tasks[0] is not asyncio.current_task()

    run(test)


def test_fetches_wait_for_about_thirty_milliseconds_of_a_steady_inflow():
    assert fetch_min_bytes(480_000) == 14_400  # 3,200 events/s of 150 bytes
    assert fetch_min_bytes(10 * FETCH_MIN_BYTES_CAP / FETCH_FILL_SECONDS) == FETCH_MIN_BYTES_CAP


def test_a_quiet_stream_is_fetched_as_soon_as_a_record_arrives():
    assert fetch_min_bytes(0.0) == 1
    assert fetch_min_bytes(50.0) == 1  # a third of an event a second


def test_sizing_fetches_before_the_consumer_has_started_does_nothing():
    async def test():
        app = faust.App("sizing-before-start", broker="kafka://127.0.0.1:1")
        assert app.consumer._thread._consumer is None  # Faust has not created it yet
        set_fetch_min_bytes(app, 4_800)  # what the worker's timer may do while it starts: no error

    run(test)


def test_tuning_a_consumer_that_has_not_started_says_so():
    async def test():
        app = faust.App("tuning-before-start", broker="kafka://127.0.0.1:1")
        with pytest.raises(RuntimeError, match="has not started"):
            tune_consumer(app)

    run(test)


SUPPORTED_NOW = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


def installed(**versions):
    """A stand-in for importlib.metadata.version: supported versions, but `versions`."""
    return {**SUPPORTED_NOW, **versions}.__getitem__


def test_the_installed_versions_are_supported():
    check_versions()
    check_versions(installed())


@pytest.mark.parametrize(
    "name, version, supported",
    [
        ("faust-streaming", "0.16.0", "faust-streaming >=0.15.3,<0.16"),
        ("faust-streaming", "0.15.2", "faust-streaming >=0.15.3,<0.16"),
        ("aiokafka", "0.15.1", "aiokafka >=0.13,<0.15"),
        ("aiokafka", "0.12.0", "aiokafka >=0.13,<0.15"),
    ],
)
def test_an_unsupported_version_is_refused_naming_the_supported_range(name, version, supported):
    with pytest.raises(UnsupportedVersion, match=f"supports {supported}; {version} is installed"):
        check_versions(installed(**{name: version}))


def test_importing_with_an_unsupported_faust_fails(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "0.17.0" if name == "faust-streaming" else real(name),
    )
    path = Path(stream.faust_compat.__file__)
    spec = importlib.util.spec_from_file_location("faust_compat_under_test", path)
    with pytest.raises(ImportError, match=r"faust-streaming >=0\.15\.3,<0\.16; 0\.17\.0"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_worker_does_not_switch_library_debug_logging_on():
    # Faust's terminal spinner sets the root logger to DEBUG: every debug line of every library
    # (aiokafka: one per message produced) would be formatted on the hot path.
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        worker = create_worker(faust.App("logging-test"), "warning", quiet=True)
        worker._setup_logging()
        assert not logging.getLogger("aiokafka.producer.producer").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("aiokafka").isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def test_the_supported_range_is_the_one_pyproject_pins():
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = dict(re.match(r"([\w-]+)(.*)", d).groups() for d in pyproject["project"]["dependencies"])
    for name, (low, high) in stream.faust_compat.SUPPORTED.items():
        dotted = [".".join(map(str, version)) for version in (low, high)]
        assert pins[name] == f">={dotted[0]},<{dotted[1]}"


def test_a_failed_metadata_update_waits_before_the_next_is_asked_for():
    from stream.connection import Cluster
    from stream.faust_compat import METADATA_RETRY_SECONDS, pace_failed_metadata_updates

    pace_failed_metadata_updates()
    pace_failed_metadata_updates()  # once only

    async def timed() -> float:
        client = Cluster("127.0.0.1:1").aio_consumer()._client  # nothing listens there
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client._metadata_update(client.cluster, [])
        return loop.time() - started

    assert METADATA_RETRY_SECONDS <= asyncio.run(timed()) < METADATA_RETRY_SECONDS + 0.4


# --- the events topic in bulk: a stand-in for Faust's consumer, as BulkDelivery uses it ----


class FetchingConsumer:
    """What BulkDelivery uses of Faust's consumer: its fetch step, offsets to commit, the
    unacked set that a revocation waits on, the flow, and the high watermarks."""

    def __init__(self):
        self.fetches: asyncio.Queue = asyncio.Queue()
        self._acked = collections.defaultdict(list)
        self._unacked_messages = weakref.WeakSet()
        self._waiting_for_ack = None
        self.flow_active = True
        self.can_resume_flow, self.suspend_flow = asyncio.Event(), asyncio.Event()
        self.highwaters: dict = {}
        self.assigned = {TP("events", p) for p in range(4)} | {TP("catalog", 0)}

    def _get_active_partitions(self) -> set:
        return self.assigned  # Faust's own set: pausing and resuming change it in place

    async def _wait_next_records(self, timeout):
        active = self._get_active_partitions()
        return await self._getmany(active_partitions=active, timeout=timeout), active

    async def _getmany(self, active_partitions, timeout):
        fetched = await self.fetches.get()  # only the partitions asked for are fetched
        return {tp: records for tp, records in fetched.items() if tp in active_partitions}

    def _new_offset(self, tp):
        return "faust's own"

    def highwater(self, tp):
        return self.highwaters.get(tp)


def kafka_records(partition: int, *offsets: int) -> list:
    return [
        types.SimpleNamespace(key=b"u", value=b"{}", partition=partition, offset=o, timestamp=0)
        for o in offsets
    ]


def bulk(max_buffered: int = 100):
    consumer = FetchingConsumer()
    subscribed: list = []  # the topics Faust's conductor was given
    app = types.SimpleNamespace(
        consumer=consumer, consumer_generation_id=1, subscribed=subscribed,
        topics=types.SimpleNamespace(add=subscribed.append),
    )  # fmt: skip
    topic = types.SimpleNamespace(get_topic_name=lambda: "events")
    delivery = BulkDelivery(app, topic, max_buffered)
    delivery.install()
    return app, consumer, delivery


async def fetch(consumer, records: dict):
    """One turn of Faust's fetch loop: what reaches Faust's own delivery."""
    consumer.fetches.put_nowait(records)
    fetched, _ = await asyncio.wait_for(consumer._wait_next_records(1.0), 5.0)
    return fetched


def test_the_topics_records_go_to_the_worker_in_bulk_and_the_rest_to_faust():
    async def test():
        app, consumer, delivery = bulk()
        catalog = kafka_records(0, 7)
        left = await fetch(
            consumer, {TP("events", 0): kafka_records(0, 0, 1), TP("catalog", 0): catalog}
        )
        assert left == {TP("catalog", 0): catalog}
        await fetch(consumer, {TP("events", 1): kafka_records(1, 5)})
        await asyncio.wait_for(delivery.ready(), 5.0)
        assert [(r.partition, r.offset) for r in delivery.take(10)] == [(0, 0), (0, 1), (1, 5)]
        assert app.subscribed  # subscribed, as an agent iterating it would be

    asyncio.run(test())


def test_a_take_keeps_each_partitions_order_across_fetches_and_stops_at_its_size():
    async def test():
        _, consumer, delivery = bulk()
        await fetch(consumer, {TP("events", 0): kafka_records(0, 0, 1, 2)})
        await fetch(consumer, {TP("events", 0): kafka_records(0, 3, 4)})
        assert [r.offset for r in delivery.take(4)] == [0, 1, 2, 3]
        delivery.finished()
        assert [r.offset for r in delivery.take(4)] == [4]

    asyncio.run(test())


def test_records_fetched_before_a_rebalance_are_never_taken():
    async def test():
        app, consumer, delivery = bulk()
        await fetch(consumer, {TP("events", 0): kafka_records(0, 0, 1)})
        consumer.flow_active = False  # a revocation has begun
        assert delivery.take(10) == []
        delivery.finished()
        app.consumer_generation_id, consumer.flow_active = 2, True  # assigned again: Faust
        await fetch(consumer, {TP("events", 0): kafka_records(0, 0)})  # seeks to the commits
        assert [r.offset for r in delivery.take(10)] == [0] and delivery.buffered == 0

    asyncio.run(test())


def test_a_batch_holds_a_revocation_back_until_it_is_finished():
    async def test():
        _, consumer, delivery = bulk()
        await fetch(consumer, {TP("events", 0): kafka_records(0, 0)})
        delivery.take(10)
        assert len(consumer._unacked_messages) == 1  # what Faust's wait_empty waits for
        consumer._waiting_for_ack = asyncio.get_running_loop().create_future()
        delivery.finished()
        assert len(consumer._unacked_messages) == 0 and consumer._waiting_for_ack.done()

    asyncio.run(test())


def test_faust_commits_past_a_batch_only_once_it_is_processed():
    async def test():
        app, consumer, delivery = bulk()
        await fetch(consumer, {TP("events", 3): kafka_records(3, 10, 11)})
        delivery.take(10)
        assert TP("events", 3) not in consumer._acked  # nothing to commit yet
        delivery.processed()
        delivery.finished()
        assert TP("events", 3) in consumer._acked  # Faust's commit goes over this partition
        assert consumer._new_offset(TP("events", 3)) == 12  # the next offset to read
        assert consumer._new_offset(TP("catalog", 0)) == "faust's own"
        await fetch(consumer, {TP("events", 3): kafka_records(3, 12)})
        delivery.take(10)
        app.consumer_generation_id = 2  # revoked while it was processed
        delivery.processed()
        assert consumer._new_offset(TP("events", 3)) == 12

    asyncio.run(test())


def test_a_full_buffer_leaves_the_topic_out_of_fetches_and_the_others_go_on():
    async def test():
        _, consumer, delivery = bulk(max_buffered=2)
        await fetch(consumer, {TP("events", 0): kafka_records(0, 0, 1)})
        catalog = kafka_records(0, 7)
        # the worker may be waiting for the catalog: its records must still come
        left = await fetch(
            consumer, {TP("events", 0): kafka_records(0, 2), TP("catalog", 0): catalog}
        )
        assert left == {TP("catalog", 0): catalog} and delivery.buffered == 2
        assert TP("events", 0) in consumer._get_active_partitions()  # Faust's set is untouched
        delivery.take(1)  # room again: the topic is fetched again
        await fetch(consumer, {TP("events", 0): kafka_records(0, 2)})
        assert delivery.buffered == 2

    asyncio.run(test())


def test_with_nothing_else_to_fetch_a_full_buffer_waits_for_a_take_or_a_suspended_flow():
    async def test():
        _, consumer, delivery = bulk(max_buffered=2)
        consumer.assigned = {TP("events", 0)}
        await fetch(consumer, {TP("events", 0): kafka_records(0, 0, 1)})
        waiting = asyncio.ensure_future(fetch(consumer, {TP("events", 0): kafka_records(0, 2)}))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # as on a full stream buffer
        delivery.take(1)
        await asyncio.wait_for(waiting, 5.0)
        consumer.fetches.put_nowait({})
        waiting = asyncio.ensure_future(consumer._wait_next_records(1.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        consumer.suspend_flow.set()  # a rebalance must not wait for the worker
        await asyncio.wait_for(waiting, 5.0)

    asyncio.run(test())


def test_a_table_write_names_its_partition_without_an_event():
    event = partition_event("events", 5)
    assert (event.message.topic, event.message.partition) == ("events", 5)
    assert partition_event("events", 5) is event  # kept alive for Faust's weak reference
    with in_partition_of(event):
        assert faust.streams.current_event().message.partition == 5
