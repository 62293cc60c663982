"""Fixtures shared by every test: a real Kafka cluster and per-test settings.

The cluster is started once per session from Maven Central jars (see stream/local_kafka.py),
or taken from KAFKA_BOOTSTRAP (and the CURRENTS_KAFKA_* connection) when that is set. The
local one accepts only SASL_SSL (SCRAM-SHA-512, TLS with a generated CA): a client of the
project that does not get the connection config fails the test that uses it.
"""

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.connection import Cluster
from stream.local_kafka import LocalKafka, free_port
from stream.settings import Settings

TEST_PARTITIONS = 4


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka | None]:
    """The session's secure local broker; None when KAFKA_BOOTSTRAP names a cluster."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield None
        return
    kafka = LocalKafka(tmp_path_factory.mktemp("kafka"), partitions=TEST_PARTITIONS, secure=True)
    kafka.start()
    try:
        yield kafka
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def kafka_cluster(kafka_broker: LocalKafka | None) -> Cluster:
    """Where the tests' cluster is and how to connect to it."""
    return Settings.from_env().cluster if kafka_broker is None else kafka_broker.cluster


@pytest.fixture()
def settings_factory(kafka_cluster: Cluster, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with a unique app id and topics, so tests never see each other's data."""
    run = uuid.uuid4().hex[:8]

    def make(**overrides) -> Settings:
        values = dict(
            app_id=f"currents-test-{run}",
            bootstrap=kafka_cluster.bootstrap,
            kafka=kafka_cluster.security,
            events_topic=f"events-{run}",
            catalog_topic=f"catalog-{run}",
            updates_topic=f"updates-{run}",
            dead_letter_topic=f"dead-letters-{run}",
            item_vectors_topic=f"item-vectors-{run}",
            partitions=TEST_PARTITIONS,
            data_dir=tmp_path / "worker",
            web_port=free_port(),
            commit_interval=0.5,
            session_timeout=10,
        )
        return Settings(**{**values, **overrides})

    return make
