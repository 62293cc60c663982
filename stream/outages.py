"""Riding out a Kafka outage: calls retried with backoff for up to the outage budget, and a
watch that ends the worker once Kafka has not answered for longer than that.

A single broker's restart (a rolling upgrade) takes tens of seconds; a worker must wait it out
rather than die or hang. Faust's consumer and producer reconnect by themselves; the calls the
worker makes on its own (admin calls at start, the hole reader, the item-vector follower) raise
after one request timeout, so each goes through `patiently`. Past the budget, the worker exits
with one line saying why (stream/worker.py: exit_fatal), for its supervisor to restart it.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiokafka.errors
import kafka.errors

from stream.connection import BrokerUnreachable, Cluster

__all__ = [
    "EXIT_FATAL",
    "BrokerUnavailable",
    "BrokerWatch",
    "apatiently",
    "metadata_probe",
    "patiently",
    "retriable",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
# the worker's exit code when it cannot go on for a reason that is not its input (Kafka past the
# outage budget, a batch that failed): exit before anything is acked, for a supervisor to restart
EXIT_FATAL = 70
FIRST_DELAY, MAX_DELAY = 0.5, 5.0  # seconds between tries: doubling from the first, capped


class BrokerUnavailable(RuntimeError):
    """Kafka did not answer for longer than the outage budget."""


def retriable(error: BaseException) -> bool:
    """Whether `error` is one a broker outage causes (connection, timeout, no leader, no
    coordinator, no bootstrap server answering): worth trying again rather than giving up."""
    if isinstance(error, BrokerUnreachable):
        return True
    if isinstance(error, (kafka.errors.KafkaError, aiokafka.errors.KafkaError)):
        return error.retriable or type(error) is aiokafka.errors.KafkaError  # "no metadata"
    return isinstance(error, (OSError, asyncio.TimeoutError))


def _give_up(what: str, budget: float, error: BaseException) -> BrokerUnavailable:
    reason = f"{type(error).__name__}: {error}".splitlines()[0]
    return BrokerUnavailable(
        f"{what}: Kafka has not answered for {budget:.0f} s, the outage budget "
        f"(CURRENTS_OUTAGE_BUDGET); last error {reason}"
    )


def patiently(
    call: Callable[[], T],
    what: str,
    budget: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, tried again with backoff while it fails as an outage does, for up to `budget`
    seconds; then BrokerUnavailable. Any other error is raised at once."""
    deadline, delay = clock() + budget, FIRST_DELAY
    while True:
        try:
            return call()
        except Exception as error:
            late = clock() + delay > deadline
            sleep(_retry_delay(error, what, budget, late, delay))
            delay = min(MAX_DELAY, delay * 2)


async def apatiently(
    call: Callable[[], Awaitable[T]],
    what: str,
    budget: float,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """`patiently` for coroutines: `await call()`, tried again while it fails as an outage does."""
    deadline, delay = clock() + budget, FIRST_DELAY
    while True:
        try:
            return await call()
        except Exception as error:
            late = clock() + delay > deadline
            await asyncio.sleep(_retry_delay(error, what, budget, late, delay))
            delay = min(MAX_DELAY, delay * 2)


def _retry_delay(error: Exception, what: str, budget: float, late: bool, delay: float) -> float:
    """The wait before the next try after `error`; the error itself when it is not an outage,
    BrokerUnavailable when waiting would pass the budget."""
    if not retriable(error):
        raise error
    if late:
        raise _give_up(what, budget, error) from error
    log.warning("%s: Kafka unavailable (%s); trying again in %.1f s", what, error, delay)
    return delay


class BrokerWatch:
    """Asks Kafka for its metadata every few seconds (`check`), and raises BrokerUnavailable
    once it has not answered for longer than the outage budget: the worker's own bound on an
    outage, whatever Faust's consumer and producer keep waiting for."""

    def __init__(
        self,
        budget: float,
        probe: Callable[[], Awaitable[object]],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.budget, self.probe, self.clock = budget, probe, clock
        self.answered_at = clock()
        self.silent = False

    async def check(self, timeout: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self.probe(), timeout)
        except Exception as error:
            if not retriable(error):
                raise
            if not self.silent:
                log.warning("Kafka does not answer (%r); waiting up to %.0f s", error, self.budget)
            self.silent = True
            if self.clock() - self.answered_at > self.budget:
                raise _give_up("the broker watch", self.budget, error) from error
            return
        if self.silent:
            log.warning("Kafka answers again after %.0f s", self.clock() - self.answered_at)
        self.answered_at, self.silent = self.clock(), False


def metadata_probe(cluster: Cluster) -> Callable[[], Awaitable[object]]:
    """A probe for BrokerWatch: one metadata request over a consumer of its own (public
    aiokafka API), started on first use and started again after a failed start."""
    consumer = None

    async def probe() -> object:
        nonlocal consumer
        if consumer is None:
            starting = cluster.aio_consumer(request_timeout_ms=5000)
            try:
                await starting.start()
            except BaseException:
                await starting.stop()
                raise
            consumer = starting
        return await consumer.topics()

    return probe
