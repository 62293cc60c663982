"""Micro-batches that form as fast as the worker frees up, not on a timer.

Faust's `take_events(n, window)` waits out its window after every batch unless `n` events
arrive first, so on a quiet stream every event waits up to a window before its step. Here a
batch starts as soon as an event is at hand and only keeps collecting while Kafka already
holds more events of its partitions than the worker has taken (it is behind): one event or a
few on a quiet stream (latency of about one step), up to `max_size` under load or on a
backlog, where larger batches amortise the step's fixed cost. A batch never waits for events
produced after it started.
"""

import asyncio
from collections.abc import AsyncIterator

__all__ = ["ready_batches"]

GAP = 0.005  # seconds without a new event after which a batch stops waiting for the backlog


class _Buffer:
    """Events moved from the stream by a background task, at most `max_size` at a time."""

    def __init__(self, stream, max_size: int):
        self.consumer = stream.app.consumer
        self.max_size = max_size
        self.events: list = []
        self.delivered: dict = {}  # topic partition -> the offset after the last event delivered
        self.wanted = 1  # buffer size at which the batcher wants to be woken
        self.arrived = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()

    async def drain(self, manual) -> None:
        try:
            async for event in manual.events():
                self.events.append(event)
                message = event.message
                self.delivered[message.tp] = message.offset + 1
                if len(self.events) >= self.wanted:
                    self.arrived.set()
                if len(self.events) >= self.max_size:
                    self.room.clear()
                    await self.room.wait()
        finally:
            self.arrived.set()  # wake the batcher: it re-raises what ended the drain

    def in_kafka(self) -> dict:
        """The high watermark of each partition the stream has delivered from: what Kafka
        holds of it now."""
        ends = {}
        for tp in self.delivered:
            try:
                ends[tp] = self.consumer.highwater(tp)
            except (AssertionError, AttributeError):  # revoked meanwhile
                continue
        return ends

    def undelivered(self, ends: dict) -> int:
        return sum(max(0, (end or 0) - self.delivered[tp]) for tp, end in ends.items())

    def take(self) -> list:
        self.wanted = 1
        batch = self.events[:]
        self.events.clear()
        self.room.set()
        return batch


async def ready_batches(stream, max_size: int, max_wait: float) -> AsyncIterator[list]:
    """Yield lists of Faust events in arrival order; a batch is acked when the next is asked for.

    A background task moves events from the stream into a buffer of at most `max_size`. A batch
    is taken when the buffer is full, when it holds every event Kafka had of the stream's
    partitions as the batch started (their high watermarks then: what is produced later waits
    for the next batch), after `max_wait` seconds, or when no event came for `GAP` seconds
    (offsets without a record, e.g. transaction markers, never arrive). Acks come after the
    caller's batch body, so a crash never commits an unprocessed event.
    """
    manual = stream.noack()
    buffer = _Buffer(stream, max_size)
    drainer = asyncio.ensure_future(buffer.drain(manual))
    try:
        while True:
            while not buffer.events:
                if drainer.done():
                    drainer.result()  # the stream's error, if it ended in one
                    return
                buffer.arrived.clear()
                await buffer.arrived.wait()
            await _fill(buffer, max_wait)
            batch = buffer.take()
            yield batch
            for event in batch:
                await manual.ack(event)
    finally:
        drainer.cancel()


async def _fill(buffer: _Buffer, max_wait: float) -> None:
    """Wait, up to `max_wait`, for the events Kafka holds now of the partitions delivered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    ends = buffer.in_kafka()  # what arrives after this is for the next batch
    while len(buffer.events) < buffer.max_size and (missing := buffer.undelivered(ends)):
        now = loop.time()
        if now >= deadline:
            break
        before = len(buffer.events)
        buffer.wanted = min(buffer.max_size, before + missing)
        buffer.arrived.clear()
        try:
            await asyncio.wait_for(buffer.arrived.wait(), min(GAP, deadline - now))
        except TimeoutError:
            if len(buffer.events) == before:
                break  # nothing came: what is missing may never come
