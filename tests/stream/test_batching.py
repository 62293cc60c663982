"""ready_batches: what a batch holds and when it is taken, on a stand-in for the bulk delivery.

The stand-in has just what ready_batches uses of stream/faust_compat.py's BulkDelivery: the
records waiting, the high watermarks of their partitions, and what was reported processed.
The integration tests run the real worker on a real broker.
"""

import asyncio
import functools

import pytest

from stream.batching import GAP, ready_batches
from stream.records import Record

GUARD = 5.0  # seconds: only there so that a broken batcher fails instead of hanging


def scenario(test):
    """Run an async test body on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run():
        asyncio.run(test())

    return run


class Source:
    """Records of partition 0 arriving as a test puts them."""

    def __init__(self):
        self.waiting: list[Record] = []
        self.arrived = asyncio.Event()
        self.highwater = 0
        self.delivered = 0
        self.acked: list = []
        self.error: Exception | None = None
        self.in_flight: list | None = None  # the batch taken, until finished

    @property
    def buffered(self) -> int:
        return len(self.waiting)

    async def ready(self) -> None:
        while not self.waiting:
            if self.error is not None:
                raise self.error
            self.arrived.clear()
            await self.arrived.wait()

    def in_kafka(self) -> dict:
        return {0: self.highwater}

    def undelivered(self, ends: dict) -> int:
        return max(0, ends[0] - self.delivered)

    def take(self, max_size: int) -> list[Record]:
        self.in_flight, self.waiting = self.waiting[:max_size], self.waiting[max_size:]
        return self.in_flight

    def processed(self) -> None:
        self.acked += self.in_flight

    def finished(self) -> None:
        self.in_flight = None

    def put(self, *offsets: int, highwater: int | None = None) -> list:
        records = [Record(b"u", b"{}", 0, o, 0.0) for o in offsets]
        self.waiting += records
        self.delivered = offsets[-1] + 1
        self.highwater = highwater if highwater is not None else offsets[-1] + 1
        self.arrived.set()
        return records

    def fail(self, error: Exception) -> None:
        self.error = error
        self.arrived.set()


def offsets(batch) -> list[int]:
    return [record.offset for record in batch]


async def next_batch(batches) -> list:
    return await asyncio.wait_for(anext(batches), GUARD)


@scenario
async def test_a_quiet_stream_gets_a_batch_per_event_without_waiting_for_the_window():
    source = Source()
    batches = ready_batches(source, max_size=256, max_wait=60.0)
    source.put(0)
    assert offsets(await next_batch(batches)) == [0]
    source.put(1)
    assert offsets(await next_batch(batches)) == [1]


@scenario
async def test_a_batch_takes_the_events_kafka_already_holds_for_its_partitions():
    source = Source()
    batches = ready_batches(source, max_size=256, max_wait=60.0)
    source.put(0, highwater=5)  # four more are in Kafka, on their way to the worker

    async def deliver_the_rest():
        for offset in range(1, 5):
            await asyncio.sleep(GAP / 10)
            source.put(offset, highwater=5)

    delivery = asyncio.ensure_future(deliver_the_rest())
    assert offsets(await next_batch(batches)) == [0, 1, 2, 3, 4]
    await delivery


@scenario
async def test_a_batch_does_not_wait_for_events_produced_after_it_started():
    source = Source()
    batches = ready_batches(source, max_size=256, max_wait=60.0)
    source.put(0, highwater=3)  # two more are in Kafka when the batch starts

    async def keep_producing():  # ... and Kafka keeps receiving, faster than the gap
        for offset in range(1, 10):
            await asyncio.sleep(GAP / 3)
            source.put(offset, highwater=10)

    delivery = asyncio.ensure_future(keep_producing())
    try:
        assert offsets(await next_batch(batches)) == [0, 1, 2]
    finally:
        delivery.cancel()


@scenario
async def test_batches_hold_at_most_max_size_events():
    source = Source()
    batches = ready_batches(source, max_size=4, max_wait=60.0)
    source.put(*range(10))
    sizes = [len(await next_batch(batches)) for _ in range(3)]
    assert sizes == [4, 4, 2]


@scenario
async def test_events_are_acked_only_once_their_batch_is_processed():
    source = Source()
    batches = ready_batches(source, max_size=256, max_wait=60.0)
    first = source.put(0)
    assert await next_batch(batches) == first
    assert source.acked == [] and source.in_flight  # the caller is still processing the batch
    source.put(1)
    await next_batch(batches)
    assert source.acked == first


@scenario
async def test_a_batch_abandoned_by_its_caller_is_not_acked_but_is_let_go():
    source = Source()
    batches = ready_batches(source, max_size=256, max_wait=60.0)
    source.put(0)
    await next_batch(batches)
    await batches.aclose()  # the worker's loop ended with the batch unprocessed
    assert source.acked == [] and source.in_flight is None


@scenario
async def test_offsets_that_never_arrive_end_the_wait_after_a_gap():
    # e.g. transaction markers: the high watermark counts offsets no record will ever have
    source = Source()
    batches = ready_batches(source, max_size=256, max_wait=60.0)
    source.put(0, highwater=100)
    assert offsets(await next_batch(batches)) == [0]


@scenario
async def test_a_batch_waits_for_the_backlog_at_most_max_wait():
    source = Source()
    batches = ready_batches(source, max_size=256, max_wait=GAP * 4)
    source.put(0, highwater=1000)

    async def trickle():  # events keep coming, each within the gap, none ever the last
        for offset in range(1, 1000):
            await asyncio.sleep(GAP / 5)
            source.put(offset, highwater=1000)

    delivery = asyncio.ensure_future(trickle())
    try:
        batch = await next_batch(batches)
    finally:
        delivery.cancel()
    assert 1 < len(batch) < 999


@scenario
async def test_an_error_of_the_stream_ends_the_batches_with_it():
    source = Source()
    batches = ready_batches(source, max_size=256, max_wait=60.0)
    source.fail(RuntimeError("broker gone"))
    with pytest.raises(RuntimeError, match="broker gone"):
        await next_batch(batches)
