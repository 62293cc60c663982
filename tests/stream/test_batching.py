"""ready_batches: what a batch holds and when it is taken, on a stand-in for a Faust stream.

The stand-in has just what ready_batches uses: manual acks, an event iterator, and the
consumer's high watermarks. The integration tests run the real agent on a real broker.
"""

import asyncio
import functools
from types import SimpleNamespace

import pytest

from stream.batching import GAP, ready_batches

TP = ("events", 0)
GUARD = 5.0  # seconds: only there so that a broken batcher fails instead of hanging


def scenario(test):
    """Run an async test body on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run():
        asyncio.run(test())

    return run


class Stream:
    def __init__(self):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.acked: list = []
        self.highwater_of: dict = {}
        self.app = SimpleNamespace(consumer=SimpleNamespace(highwater=self.highwater_of.get))

    def noack(self) -> "Stream":
        return self

    async def events(self):
        while True:
            item = await self.queue.get()
            if isinstance(item, Exception):
                raise item
            yield item

    async def ack(self, event) -> None:
        self.acked.append(event)

    def put(self, *offsets: int, highwater: int | None = None) -> list:
        events = [SimpleNamespace(message=SimpleNamespace(tp=TP, offset=o)) for o in offsets]
        for event in events:
            self.queue.put_nowait(event)
        self.highwater_of[TP] = highwater if highwater is not None else offsets[-1] + 1
        return events


def offsets(batch) -> list[int]:
    return [event.message.offset for event in batch]


async def next_batch(batches) -> list:
    return await asyncio.wait_for(anext(batches), GUARD)


@scenario
async def test_a_quiet_stream_gets_a_batch_per_event_without_waiting_for_the_window():
    stream = Stream()
    batches = ready_batches(stream, max_size=256, max_wait=60.0)
    stream.put(0)
    assert offsets(await next_batch(batches)) == [0]
    stream.put(1)
    assert offsets(await next_batch(batches)) == [1]


@scenario
async def test_a_batch_takes_the_events_kafka_already_holds_for_its_partitions():
    stream = Stream()
    batches = ready_batches(stream, max_size=256, max_wait=60.0)
    stream.put(0, highwater=5)  # four more are in Kafka, on their way to the worker

    async def deliver_the_rest():
        for offset in range(1, 5):
            await asyncio.sleep(GAP / 10)
            stream.put(offset, highwater=5)

    delivery = asyncio.ensure_future(deliver_the_rest())
    assert offsets(await next_batch(batches)) == [0, 1, 2, 3, 4]
    await delivery


@scenario
async def test_a_batch_does_not_wait_for_events_produced_after_it_started():
    stream = Stream()
    batches = ready_batches(stream, max_size=256, max_wait=60.0)
    stream.put(0, highwater=3)  # two more are in Kafka when the batch starts

    async def keep_producing():  # ... and Kafka keeps receiving, faster than the gap
        for offset in range(1, 10):
            await asyncio.sleep(GAP / 3)
            stream.put(offset, highwater=10)

    delivery = asyncio.ensure_future(keep_producing())
    try:
        assert offsets(await next_batch(batches)) == [0, 1, 2]
    finally:
        delivery.cancel()


@scenario
async def test_batches_hold_at_most_max_size_events():
    stream = Stream()
    batches = ready_batches(stream, max_size=4, max_wait=60.0)
    stream.put(*range(10))
    sizes = [len(await next_batch(batches)) for _ in range(3)]
    assert sizes == [4, 4, 2]


@scenario
async def test_events_are_acked_only_once_their_batch_is_processed():
    stream = Stream()
    batches = ready_batches(stream, max_size=256, max_wait=60.0)
    first = stream.put(0)
    assert await next_batch(batches) == first
    assert stream.acked == []  # the caller is still processing the batch
    stream.put(1)
    await next_batch(batches)
    assert stream.acked == first


@scenario
async def test_offsets_that_never_arrive_end_the_wait_after_a_gap():
    # e.g. transaction markers: the high watermark counts offsets no record will ever have
    stream = Stream()
    batches = ready_batches(stream, max_size=256, max_wait=60.0)
    stream.put(0, highwater=100)
    assert offsets(await next_batch(batches)) == [0]


@scenario
async def test_a_batch_waits_for_the_backlog_at_most_max_wait():
    stream = Stream()
    batches = ready_batches(stream, max_size=256, max_wait=GAP * 4)
    stream.put(0, highwater=1000)

    async def trickle():  # events keep coming, each within the gap, none ever the last
        for offset in range(1, 1000):
            await asyncio.sleep(GAP / 5)
            stream.put(offset, highwater=1000)

    delivery = asyncio.ensure_future(trickle())
    try:
        batch = await next_batch(batches)
    finally:
        delivery.cancel()
    assert 1 < len(batch) < 999


@scenario
async def test_an_error_of_the_stream_ends_the_batches_with_it():
    stream = Stream()
    batches = ready_batches(stream, max_size=256, max_wait=60.0)
    stream.queue.put_nowait(RuntimeError("broker gone"))
    with pytest.raises(RuntimeError, match="broker gone"):
        await next_batch(batches)
