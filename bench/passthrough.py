"""The peer of the throughput benchmark: a bare Faust agent that forwards every record.

Configured by the environment (set by bench/throughput.py): the cluster and its connection as
for Currents (CURRENTS_BOOTSTRAP, CURRENTS_KAFKA_*), and BENCH_APP_ID, BENCH_SOURCE, BENCH_SINK,
BENCH_PARTITIONS, BENCH_DATA_DIR
Run: python bench/passthrough.py worker -l warning
"""

import os

import faust

from stream.settings import Settings

settings = Settings.from_env()
app = faust.App(
    os.environ["BENCH_APP_ID"],
    broker=settings.broker_url,
    broker_credentials=settings.kafka.faust_credentials(),
    datadir=os.environ["BENCH_DATA_DIR"],
    topic_partitions=int(os.environ["BENCH_PARTITIONS"]),
    web_enabled=False,
)
source = app.topic(os.environ["BENCH_SOURCE"], key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ["BENCH_SINK"], key_serializer="raw", value_serializer="raw")


@app.agent(source)
async def forward(stream):
    async for event in stream.events():
        await sink.send(key=event.key, value=event.value)


if __name__ == "__main__":
    app.main()
