"""Fixtures shared by every test: a real Kafka cluster and per-test settings.

The cluster is started once per session from Maven Central jars (see stream/local_kafka.py),
or taken from KAFKA_BOOTSTRAP when that is set.
"""

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.local_kafka import LocalKafka, free_port
from stream.settings import Settings

TEST_PARTITIONS = 4


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    kafka = LocalKafka(tmp_path_factory.mktemp("kafka"), partitions=TEST_PARTITIONS)
    kafka.start()
    try:
        yield kafka.bootstrap
    finally:
        kafka.stop()


@pytest.fixture()
def settings_factory(kafka_bootstrap: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings with a unique app id and topics, so tests never see each other's data."""
    run = uuid.uuid4().hex[:8]

    def make(**overrides) -> Settings:
        values = dict(
            app_id=f"currents-test-{run}",
            bootstrap=kafka_bootstrap,
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
