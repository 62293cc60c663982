"""Worker settings, resolved once into an immutable object (pydantic-settings).

Every field can be set with an environment variable `CURRENTS_<FIELD>` (upper case), e.g.
`CURRENTS_PARTITIONS=16`, or the same line in a `.env` file in the working directory (the
environment wins). `KAFKA_BOOTSTRAP` (host:port[,host:port]) points everything at an existing
cluster instead of the local one. The Kafka connection is `CURRENTS_KAFKA_<FIELD>`
(stream/connection.py). A secret (a `SecretStr` field) can come from a file instead, as
Kubernetes and Docker mount them: `CURRENTS_WEB_TOKEN_FILE=/run/secrets/token`. Secrets print
as stars, and errors name the variable, never its value.
"""

import os
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from stream.connection import Cluster, KafkaSecurity

__all__ = ["Settings", "SettingsError"]

ENV_PREFIX = "CURRENTS_"
ENV_FILE = ".env"


class SettingsError(ValueError):
    """A setting that cannot be read (a secret file missing, a secret set twice); the message
    names the variable, never a secret's value."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=ENV_FILE,
        # CURRENTS_KAFKA_SASL_USERNAME -> kafka.sasl_username; flat fields are not split
        env_nested_delimiter="_",
        env_nested_max_split=1,
        frozen=True,
        # a shared .env holds other programs' variables, and CURRENTS_KAFKA_HOME is the broker
        # jars' cache: ignored here; a misspelt argument is refused by __init__
        extra="ignore",
        hide_input_in_errors=True,  # a rejected value may be a secret
        validate_by_name=True,  # Settings(bootstrap=...) as well as the variables
    )

    app_id: str = Field(default="currents", description="Faust app id = Kafka consumer group.")
    bootstrap: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP", "CURRENTS_BOOTSTRAP"),
        description="Kafka bootstrap servers, host:port[,host:port]; KAFKA_BOOTSTRAP wins.",
    )
    kafka: KafkaSecurity = Field(
        default_factory=KafkaSecurity,
        description="How every client connects: CURRENTS_KAFKA_SECURITY_PROTOCOL, ...",
    )
    events_topic: str = Field(default="currents.events", description="Behaviour events in.")
    catalog_topic: str = Field(default="currents.catalog", description="Item upserts/deletes in.")
    updates_topic: str = Field(default="currents.interest-updates", description="Updates out.")
    dead_letter_topic: str = Field(default="currents.dead-letters", description="Rejects out.")
    item_vectors_topic: str = Field(
        default="currents.item-vectors",
        description="Encoded items, compacted; every worker reads it.",
    )
    partitions: int = Field(default=8, ge=1, description="Partitions of every Currents topic.")
    replication_factor: int = Field(default=1, ge=1, description="Replication of every topic.")
    data_dir: Path = Field(
        default=Path(".currents/worker"),
        description="RocksDB tables of this worker; one folder per worker process.",
    )
    web_port: int = Field(default=6066, ge=1, le=65535, description="HTTP port of this worker.")
    web_host: str = Field(default="127.0.0.1", description="Address peers reach this worker at.")
    web_bind: str = Field(default="127.0.0.1", description="Interface the HTTP server binds to.")
    web_token: SecretStr | None = Field(
        default=None,
        description="Bearer token every user and item endpoint requires (none: open); "
        "or a file: CURRENTS_WEB_TOKEN_FILE.",
    )
    web_metrics_open: bool = Field(
        default=True, description="Whether /metrics answers without the token."
    )
    checkpoint: Path | None = Field(
        default=None, description="Model checkpoint (`currents train`); required by workers."
    )
    device: str = Field(default="cpu", description="Torch device for inference: cpu, cuda, cuda:1.")
    torch_threads: int = Field(
        default=1,
        ge=1,
        description="Torch CPU threads of the process (the catalog encoder's too). A "
        "micro-batch is too small to split: more threads only spin and wait for each other "
        "(docs/benchmarks.md).",
    )
    batch_size: int = Field(
        default=1024,
        ge=1,
        description="Most events in one micro-batch: a backlog's batches are this large, and a "
        "larger one spreads the model step's fixed cost over more events (docs/benchmarks.md).",
    )
    batch_window: float = Field(
        default=0.05,
        gt=0,
        description="Most seconds a micro-batch waits for events Kafka already holds; it never "
        "waits for events not yet produced (stream/batching.py).",
    )
    top_n: int = Field(default=10, ge=1, le=1000, description="Recommendations per update.")
    top_categories: int = Field(default=5, ge=1, description="Interest categories per update.")
    encoder_cache: Path = Field(
        default=Path(".cache/item-vectors"), description="On-disk cache of item text vectors."
    )
    commit_interval: float = Field(default=2.8, gt=0, description="Seconds between commits.")
    session_timeout: float = Field(
        default=30.0, ge=6, description="Seconds before a silent worker's partitions move."
    )
    outage_budget: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a worker waits for an unavailable Kafka before it exits (code 70).",
    )

    @property
    def broker_url(self) -> str:
        return ";".join(f"kafka://{server}" for server in self.bootstrap.split(","))

    def __init__(self, **values: Any):
        unknown = sorted(
            name
            for name in values
            if not name.startswith("_") and name not in type(self).model_fields
        )
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(unknown)}")
        super().__init__(**values)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):  # fmt: skip
        """Arguments, then the environment, then secrets from `..._FILE` files, then `.env`."""
        return init_settings, env_settings, _SecretFiles(settings_cls), dotenv_settings

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        """Defaults, then `.env`, then `CURRENTS_*` variables (and `KAFKA_BOOTSTRAP`), then
        `overrides`. Raises SettingsError, naming the variables, on invalid values."""
        try:
            return cls(**overrides)
        except ValidationError as error:
            problems = "; ".join(
                f"{ENV_PREFIX}{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
                for e in error.errors(include_url=False, include_input=False)
            )
            raise SettingsError(f"invalid settings: {problems}") from None

    @property
    def cluster(self) -> Cluster:
        """Where the cluster is and how to connect: every Kafka client is made from it."""
        return Cluster(self.bootstrap, self.kafka)

    def to_env(self) -> dict[str, str]:
        """The `CURRENTS_*` variables that reproduce these settings in a child process, secrets
        included (a child's environment is as private as this process's)."""
        return {
            **_env_of(self, ENV_PREFIX, exclude={"kafka"}),
            **_env_of(self.kafka, ENV_PREFIX + "KAFKA_"),
        }

    def faust_options(self, replay: bool = False) -> dict:
        """Faust's app settings for these (stream/app.py); a replay's differ a little."""
        return dict(
            broker=self.broker_url,
            broker_credentials=self.kafka.faust_credentials(),
            store="rocksdb://",  # through rocksdict, the binding Faust uses when installed
            datadir=str(self.data_dir),
            topic_partitions=self.partitions,
            topic_replication_factor=self.replication_factor,
            broker_commit_interval=self.commit_interval,
            broker_session_timeout=self.session_timeout,
            broker_heartbeat_interval=min(3.0, self.session_timeout / 10),
            # No standby replicas: Faust 0.15 clears its changelog queue whenever flow resumes, and
            # standby records queued then are lost for good (their read offset has moved on), so a
            # standby promoted at a rebalance served missing or stale user states. A partition
            # that moves is restored from its changelog instead, with the streams paused.
            table_standby_replicas=0,
            # Sends wait out an outage: the worker's broker watch gives up first (stream/outages.py)
            producer_request_timeout=self.outage_budget + 60.0,
            web_host=self.web_host,
            web_port=self.web_port,
            web_enabled=not replay,  # a replay is driven from its command line
            # A replay publishes one update per event: fewer, larger produce requests.
            producer_linger=0.01 if replay else 0.0,
            producer_max_batch_size=(1 << 18) if replay else 16384,
            web_bind=self.web_bind,
            canonical_url=f"http://{self.web_host}:{self.web_port}",
            # Faust's own /table and /router pages expose raw table contents: off.
            web_tables_enabled=False,
            web_router_enabled=False,
        )


def _env_of(model: BaseModel, prefix: str, exclude: set[str] = frozenset()) -> dict[str, str]:
    env = {}
    for name, value in model:
        if name in exclude or value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
            env[f"{prefix}{name.upper()}_FILE"] = ""  # not the parent's file: this value
        env[prefix + name.upper()] = str(value)
    return env


def _secret_fields(model: type[BaseModel], prefix: str) -> dict[str, tuple[str, ...]]:
    """`CURRENTS_..._FILE` variable -> the path of the secret field it fills."""
    found = {}
    for name, field in model.model_fields.items():
        if field.annotation in (SecretStr, SecretStr | None):
            found[f"{prefix}{name.upper()}_FILE"] = (name,)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            nested = _secret_fields(field.annotation, f"{prefix}{name.upper()}_")
            found.update({env: (name, *path) for env, path in nested.items()})
    return found


class _SecretFiles(PydanticBaseSettingsSource):
    """Secrets read from the files `..._FILE` variables name (in the environment or `.env`):
    `CURRENTS_KAFKA_SASL_PASSWORD_FILE=/run/secrets/kafka-password`. The file's content,
    without a trailing line break, is the secret."""

    def get_field_value(self, field, field_name):  # unused: __call__ reads every field at once
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        env_file = Path(ENV_FILE)
        dotenv = dotenv_values(env_file) if env_file.is_file() else {}
        variables = {**dotenv, **os.environ}
        values: dict[str, Any] = {}
        for variable, path in _secret_fields(self.settings_cls, ENV_PREFIX).items():
            if not variables.get(variable):
                continue
            direct = variable.removesuffix("_FILE")
            if variables.get(direct):
                raise SettingsError(f"set {direct} or {variable}, not both")
            try:
                secret = Path(variables[variable]).read_text().rstrip("\r\n")
            except OSError as error:
                raise SettingsError(
                    f"{variable}: cannot read {variables[variable]}: {error.strerror}"
                ) from None
            target = values
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = secret
        return values
