"""The second peer of the throughput benchmark: a plain Python loop over librdkafka.

What a Python process can move with no framework at all: consume in batches of 1,000, decode
each value (orjson), produce it unchanged to the sink keyed as it came, in one consumer group.
It is the ceiling the issue measures the engine against, not a design: no state, no
exactly-once, offsets auto-committed.

Configured by the environment, as bench/passthrough.py (BENCH_APP_ID, BENCH_SOURCE,
BENCH_SINK and the cluster's CURRENTS_* settings). Run: python bench/librdkafka_passthrough.py
"""

import os
import signal

import orjson

from stream.settings import Settings


def main() -> None:
    cluster = Settings.from_env().cluster
    consumer = cluster.confluent_consumer(
        **{"group.id": os.environ["BENCH_APP_ID"], "auto.offset.reset": "earliest"}
    )
    producer = cluster.confluent_producer(**{"linger.ms": 5, "partitioner": "murmur2_random"})
    consumer.subscribe([os.environ["BENCH_SOURCE"]])
    sink = os.environ["BENCH_SINK"]
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    raise RuntimeError(message.error())
                value = message.value()
                orjson.loads(value)
                try:
                    producer.produce(sink, value=value, key=message.key())
                except BufferError:  # librdkafka's queue is full: let it deliver, then retry
                    producer.poll(1)
                    producer.produce(sink, value=value, key=message.key())
            producer.poll(0)
    finally:
        producer.flush(10)
        consumer.close()


if __name__ == "__main__":
    main()
