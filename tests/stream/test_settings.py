import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from stream.connection import KafkaSecurity
from stream.settings import Settings, SettingsError

SECRET = "hunter2-the-secret"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """No CURRENTS_* variable nor .env of the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("CURRENTS_") or name == "KAFKA_BOOTSTRAP":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_environment_overrides_defaults_and_kafka_bootstrap_wins(monkeypatch):
    monkeypatch.setenv("CURRENTS_PARTITIONS", "16")
    monkeypatch.setenv("CURRENTS_DATA_DIR", "/tmp/w1")
    monkeypatch.setenv("CURRENTS_BOOTSTRAP", "other:1")
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "h:1,h:2")
    settings = Settings.from_env()
    assert settings.partitions == 16 and settings.data_dir == Path("/tmp/w1")
    assert settings.broker_url == "kafka://h:1;kafka://h:2"
    assert Settings.from_env(partitions=2).partitions == 2  # arguments win


def test_a_dot_env_file_is_read_and_the_environment_wins(monkeypatch):
    Path(".env").write_text("CURRENTS_PARTITIONS=5\nCURRENTS_APP_ID=from-file\n")
    monkeypatch.setenv("CURRENTS_APP_ID", "from-env")
    settings = Settings.from_env()
    assert (settings.partitions, settings.app_id) == (5, "from-env")


def test_the_kafka_connection_comes_from_its_variables(monkeypatch):
    monkeypatch.setenv("CURRENTS_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CURRENTS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("CURRENTS_KAFKA_SASL_USERNAME", "currents")
    monkeypatch.setenv("CURRENTS_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("CURRENTS_KAFKA_SSL_CHECK_HOSTNAME", "false")
    monkeypatch.setenv("CURRENTS_KAFKA_HOME", "/opt/kafka-jars")  # not a connection setting
    kafka = Settings.from_env().kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert kafka.sasl_password.get_secret_value() == SECRET and not kafka.ssl_check_hostname
    options = kafka.kafka_python()
    assert options["sasl_plain_password"] == SECRET and not options["ssl_context"].check_hostname


def test_settings_survive_the_trip_through_a_child_environment(monkeypatch, tmp_path):
    kafka = KafkaSecurity(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="u",
        sasl_password=SECRET, ssl_cafile=tmp_path / "ca.pem",
    )  # fmt: skip
    settings = Settings(partitions=3, web_port=7000, commit_interval=0.5, kafka=kafka,
                        web_token="t0ken")  # fmt: skip
    # a parent given its secrets as files passes them on as values
    (tmp_path / "password").write_text("older")
    monkeypatch.setenv("CURRENTS_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "password"))
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert Settings.from_env() == settings


def test_secrets_come_from_files_without_their_line_break(monkeypatch, tmp_path):
    (tmp_path / "token").write_text(SECRET + "\n")
    monkeypatch.setenv("CURRENTS_WEB_TOKEN_FILE", str(tmp_path / "token"))
    assert Settings.from_env().web_token.get_secret_value() == SECRET
    Path(".env").write_text(f"CURRENTS_WEB_TOKEN_FILE={tmp_path / 'token'}\n")
    monkeypatch.delenv("CURRENTS_WEB_TOKEN_FILE")
    assert Settings.from_env().web_token.get_secret_value() == SECRET  # named in .env too


def test_a_secret_set_twice_or_from_a_missing_file_is_refused_by_name(monkeypatch, tmp_path):
    (tmp_path / "token").write_text(SECRET)
    monkeypatch.setenv("CURRENTS_WEB_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("CURRENTS_WEB_TOKEN", SECRET)
    with pytest.raises(SettingsError, match="CURRENTS_WEB_TOKEN or CURRENTS_WEB_TOKEN_FILE"):
        Settings.from_env()
    monkeypatch.delenv("CURRENTS_WEB_TOKEN")
    monkeypatch.setenv("CURRENTS_WEB_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="CURRENTS_WEB_TOKEN_FILE: cannot read"):
        Settings.from_env()


def test_unknown_variables_are_ignored_but_a_misspelt_argument_is_not(monkeypatch):
    Path(".env").write_text("OTHER_PROGRAM=1\nCURRENTS_KAFKA_HOME=/opt/jars\n")
    monkeypatch.setenv("CURRENTS_NOT_A_SETTING", "1")
    assert Settings.from_env() == Settings()
    with pytest.raises(TypeError, match="unknown settings: partitons"):
        Settings(partitons=3)


def test_invalid_values_are_rejected_by_name_without_the_value(monkeypatch):
    monkeypatch.setenv("CURRENTS_PARTITIONS", "zero")
    with pytest.raises(SettingsError, match="CURRENTS_PARTITIONS: Input should be a valid int"):
        Settings.from_env()
    with pytest.raises(ValidationError, match="session_timeout"):
        Settings(session_timeout=1)
    monkeypatch.delenv("CURRENTS_PARTITIONS")
    monkeypatch.setenv("CURRENTS_KAFKA_SECURITY_PROTOCOL", SECRET)  # a secret pasted wrongly
    with pytest.raises(SettingsError, match="CURRENTS_KAFKA_SECURITY_PROTOCOL") as raised:
        Settings.from_env()
    assert SECRET not in str(raised.value)


def test_secrets_print_as_stars():
    settings = Settings(
        web_token=SECRET,
        kafka=KafkaSecurity(
            security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password=SECRET
        ),
    )
    for text in (str(settings), repr(settings), settings.model_dump_json(), str(settings.kafka)):
        assert SECRET not in text
    assert SECRET not in repr(settings.kafka.faust_credentials())


@pytest.mark.parametrize(
    "values, error",
    [
        (dict(security_protocol="SASL_SSL", sasl_username="u"), "needs sasl_username and"),
        (dict(sasl_username="u", sasl_password="p"), "security_protocol is PLAINTEXT"),
        (
            dict(
                security_protocol="SASL_PLAINTEXT",
                sasl_username="u",
                sasl_password="p",
                ssl_cafile="ca.pem",
            ),
            "TLS files are set",
        ),  # fmt: skip
        (dict(security_protocol="SSL", ssl_certfile="c.pem"), "both ssl_certfile and"),
        (dict(security_protocol="TLS"), "security_protocol"),
    ],
)
def test_a_half_configured_connection_is_refused(values, error):
    with pytest.raises(ValidationError, match=error):
        KafkaSecurity(**values)


def test_every_client_gets_the_same_connection(tmp_path):
    kafka = KafkaSecurity(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
        sasl_password=SecretStr(SECRET),
    )  # fmt: skip
    python = kafka.kafka_python()
    assert python["security_protocol"] == "SASL_SSL" and python["ssl_context"].check_hostname
    assert (python["sasl_mechanism"], python["sasl_plain_username"]) == ("SCRAM-SHA-512", "u")
    assert kafka.librdkafka() == {
        "security.protocol": "sasl_ssl", "ssl.endpoint.identification.algorithm": "https",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "u", "sasl.password": SECRET,
    }  # fmt: skip
    credentials = Settings(kafka=kafka).faust_options()["broker_credentials"]
    assert (credentials.protocol.value, credentials.mechanism.value) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
    )
    assert KafkaSecurity().kafka_python() == {"security_protocol": "PLAINTEXT"}
    assert Settings().faust_options()["broker_credentials"] is None
