"""Fault injection for the worker processes of one integration test (on their PYTHONPATH only).

With CURRENTS_TEST_LOSE_FETCHED_FROM=N, the first events records at or past offset N that the
consumer fetches are lost for half a second: the consumer's position moves past them, but they
never reach Faust's streams, as Faust itself can lose records at a restart (stream/progress.py).
"""

import os
import time

if os.environ.get("CURRENTS_TEST_LOSE_FETCHED_FROM"):
    from aiokafka.consumer.fetcher import Fetcher

    first_lost = int(os.environ["CURRENTS_TEST_LOSE_FETCHED_FROM"])
    events_topic = os.environ["CURRENTS_EVENTS_TOPIC"]
    fetched_records = Fetcher.fetched_records
    losing_until = []

    async def lose_the_tail(self, partitions, timeout=0, max_records=None):
        records = await fetched_records(self, partitions, timeout=timeout, max_records=max_records)
        for tp in [tp for tp in records if tp.topic == events_topic]:
            kept = [record for record in records[tp] if record.offset < first_lost]
            if len(kept) < len(records[tp]):
                losing_until[:] = losing_until or [time.monotonic() + 0.5]
                if time.monotonic() < losing_until[0]:
                    records[tp] = kept
        return {tp: batch for tp, batch in records.items() if batch}

    Fetcher.fetched_records = lose_the_tail
