"""Three costs of Faust's consumer that its settings do not reach, lowered on the live consumer.

- **Fetch wait.** Faust hard-codes aiokafka's `fetch_max_wait_ms=1500`, and aiokafka keeps one
  fetch in flight per broker, for the partitions whose records the worker has consumed. When it
  goes out while the busy events partitions still have records buffered, it asks only for quiet
  ones (the catalog's) and the broker holds it for its whole wait; the busy partitions, drained
  meanwhile, cannot be fetched until it returns. Under a steady load those stalls fed on
  themselves: seconds of latency at half the worker's capacity (docs/benchmarks.md).
- **Fetch size.** aiokafka asks the broker to answer a fetch as soon as it has one byte: under a
  steady load every fetch carries a handful of records, and each costs the consumer thread a
  request to encode, a response to decode and a hand-over to the event loop, with the GIL taken
  back after every socket call. The fetch's minimum size follows the inflow instead: about
  `FETCH_FILL_SECONDS` of it, so a quiet stream is still answered at once, and a busy one in
  fewer, fuller fetches (`fetch_min_bytes`). The fill is a latency budget spent to save CPU:
  every fetch and every batch has a fixed cost, paid on the same GIL as the batches' steps. In
  bench/throughput.py, 30 ms of inflow against 10 ran the paced worker at 64-82 % of a core
  instead of 81-97 %, with p99 43-83 ms in twelve runs (docs/benchmarks.md).
- **Delivery.** Faust hands every record to the streams with
  `wait_first(callback(record), suspend_flow.wait())`, four tasks per record, so that a
  rebalance can abandon a delivery that blocks on a full stream buffer. Nearly every delivery
  completes without blocking: here it starts at once, in the consumer's task, and only one
  that blocks goes on under `wait_first`, with the same outcome. A third of the live worker's
  CPU per event went to those tasks (docs/benchmarks.md).

All touch private attributes (aiokafka's fetcher; mode's `Service.wait_first` on Faust's
consumer); faust and aiokafka are pinned, and every integration test runs through them.
"""

import types
from collections.abc import Coroutine, Generator

import faust
from mode.services import WaitResults

__all__ = ["FETCH_MAX_WAIT_MS", "fetch_min_bytes", "set_fetch_min_bytes", "tune_consumer"]

FETCH_MAX_WAIT_MS = 50  # how long the broker may hold a fetch that finds no new record
FETCH_FILL_SECONDS = 0.03  # under a steady load, a fetch waits for about this much inflow
FETCH_MIN_BYTES_CAP = 1 << 16  # far below a fetch's maximum (1 MiB a partition)


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
