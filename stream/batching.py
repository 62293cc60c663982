"""Micro-batches that form as fast as the worker frees up, not on a timer.

A batch starts as soon as a record is at hand and only keeps collecting while Kafka already
holds more records of its partitions than have reached the worker (it is behind): one record
or a few on a quiet stream (latency of about one step), up to `max_size` under load or on a
backlog, where larger batches amortise the step's fixed cost. A batch never waits for records
produced after it started.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from stream.records import Record

__all__ = ["Source", "ready_batches"]

GAP = 0.005  # seconds without a new record after which a batch stops waiting for the backlog


class Source(Protocol):
    """Where the records wait (stream/faust_compat.py's BulkDelivery)."""

    buffered: int  # records waiting
    arrived: asyncio.Event  # set whenever records arrive

    async def ready(self) -> None:
        """Return once records are waiting."""

    def in_kafka(self) -> dict:
        """What Kafka holds now (high watermarks) of the partitions records came from."""

    def undelivered(self, ends: dict) -> int:
        """How many records below `ends` have not arrived yet."""

    def take(self, max_size: int) -> list[Record]:
        """Up to `max_size` waiting records, each partition's in offset order."""

    def processed(self) -> None:
        """The batch taken last is processed: its offsets may be committed."""

    def finished(self) -> None:
        """The batch taken last is done with, processed or not."""


async def ready_batches(source: Source, max_size: int, max_wait: float) -> AsyncIterator[list]:
    """Yield lists of records in arrival order; a batch counts as processed when the next is
    asked for, so a crash never commits an unprocessed record.

    A batch is taken when `max_size` records wait, when every record Kafka held of their
    partitions as the batch started has arrived (their high watermarks then: what is produced
    later waits for the next batch), after `max_wait` seconds, or when no record came for `GAP`
    seconds (offsets without a record, e.g. transaction markers, never arrive).
    """
    while True:
        await source.ready()
        await _fill(source, max_size, max_wait)
        batch = source.take(max_size)  # empty if a rebalance dropped what was waiting
        try:
            if batch:
                yield batch
                source.processed()
        finally:
            source.finished()


async def _fill(source: Source, max_size: int, max_wait: float) -> None:
    """Wait, up to `max_wait`, for the records Kafka holds now of the partitions delivered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    ends = source.in_kafka()  # what arrives after this is for the next batch
    while source.buffered < max_size and source.undelivered(ends):
        now = loop.time()
        if now >= deadline:
            break
        before = source.buffered
        source.arrived.clear()
        try:
            await asyncio.wait_for(source.arrived.wait(), min(GAP, deadline - now))
        except TimeoutError:
            if source.buffered == before:
                break  # nothing came: what is missing may never come
