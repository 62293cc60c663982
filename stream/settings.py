"""Worker settings, resolved once from the environment into an immutable object.

Every field can be set with an environment variable `CURRENTS_<FIELD>` (upper case), e.g.
`CURRENTS_PARTITIONS=16`. `KAFKA_BOOTSTRAP` (host:port[,host:port]) points everything at an
existing cluster instead of the local one.
"""

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Settings"]

ENV_PREFIX = "CURRENTS_"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    app_id: str = Field(default="currents", description="Faust app id = Kafka consumer group.")
    bootstrap: str = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]."
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
    batch_size: int = Field(default=256, ge=1, description="Most events in one micro-batch.")
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

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> "Settings":
        """Defaults, then `CURRENTS_*` variables (and `KAFKA_BOOTSTRAP`), then `overrides`."""
        environ = os.environ if environ is None else environ
        values = {
            name: environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in environ
        }
        if environ.get("KAFKA_BOOTSTRAP"):
            values["bootstrap"] = environ["KAFKA_BOOTSTRAP"]
        return cls.model_validate({**values, **overrides})

    def to_env(self) -> dict[str, str]:
        """The `CURRENTS_*` variables that reproduce these settings in a child process."""
        return {ENV_PREFIX + name.upper(): str(value) for name, value in self if value is not None}

    def faust_options(self, replay: bool = False) -> dict:
        """Faust's app settings for these (stream/app.py); a replay's differ a little."""
        return dict(
            broker=self.broker_url,
            store="rocksdb://",
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
