from pathlib import Path

import pytest
from pydantic import ValidationError

from stream.settings import Settings


def test_environment_overrides_defaults_and_kafka_bootstrap_wins():
    settings = Settings.from_env(
        {"CURRENTS_PARTITIONS": "16", "CURRENTS_DATA_DIR": "/tmp/w1", "KAFKA_BOOTSTRAP": "h:1,h:2"}
    )
    assert settings.partitions == 16 and settings.data_dir == Path("/tmp/w1")
    assert settings.broker_url == "kafka://h:1;kafka://h:2"


def test_settings_survive_the_trip_through_a_child_environment():
    settings = Settings(partitions=3, web_port=7000, commit_interval=0.5)
    assert Settings.from_env(settings.to_env()) == settings


def test_invalid_values_are_rejected_by_name():
    with pytest.raises(ValidationError, match="partitions"):
        Settings.from_env({"CURRENTS_PARTITIONS": "zero"})
    with pytest.raises(ValidationError, match="session_timeout"):
        Settings(session_timeout=1)
