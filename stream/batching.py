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


async def ready_batches(stream, max_size: int, max_wait: float) -> AsyncIterator[list]:
    """Yield lists of Faust events in arrival order; a batch is acked when the next is asked for.

    A background task moves events from the stream into a buffer of at most `max_size`. A batch
    is taken when the buffer is full, when it holds every event Kafka had of the stream's
    partitions as the batch started (their high watermarks then: what is produced later waits
    for the next batch), after `max_wait` seconds, or when no event came for `GAP` seconds
    (offsets without a record, e.g. transaction markers, never arrive). Acks come after the
    caller's batch body, so a crash never commits an unprocessed event.
    """
    consumer = stream.app.consumer
    manual = stream.noack()
    buffer: list = []
    delivered: dict = {}  # topic partition -> the offset after the last event it delivered
    wanted = 1  # buffer size at which the batcher wants to be woken
    arrived = asyncio.Event()
    room = asyncio.Event()
    room.set()

    async def drain() -> None:
        try:
            async for event in manual.events():
                buffer.append(event)
                message = event.message
                delivered[message.tp] = message.offset + 1
                if len(buffer) >= wanted:
                    arrived.set()
                if len(buffer) >= max_size:
                    room.clear()
                    await room.wait()
        finally:
            arrived.set()  # wake the batcher: it re-raises what ended the drain

    def in_kafka() -> dict:
        """The high watermark of each partition the stream has delivered from: what Kafka
        holds of it now."""
        ends = {}
        for tp in delivered:
            try:
                ends[tp] = consumer.highwater(tp)
            except (AssertionError, AttributeError):  # revoked meanwhile
                continue
        return ends

    def undelivered(ends: dict) -> int:
        return sum(max(0, (end or 0) - delivered[tp]) for tp, end in ends.items())

    drainer = asyncio.ensure_future(drain())
    loop = asyncio.get_running_loop()
    try:
        while True:
            while not buffer:
                if drainer.done():
                    drainer.result()  # the stream's error, if it ended in one
                    return
                arrived.clear()
                await arrived.wait()
            deadline = loop.time() + max_wait
            ends = in_kafka()  # what arrives after this is for the next batch
            while len(buffer) < max_size and (missing := undelivered(ends)):
                now = loop.time()
                if now >= deadline:
                    break
                wanted, before = min(max_size, len(buffer) + missing), len(buffer)
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), min(GAP, deadline - now))
                except TimeoutError:
                    if len(buffer) == before:
                        break  # nothing came: what is missing may never come
            wanted = 1
            batch = buffer[:]
            buffer.clear()
            room.set()
            yield batch
            for event in batch:
                await manual.ack(event)
    finally:
        drainer.cancel()
