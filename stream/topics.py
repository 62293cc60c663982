"""Create the Currents topics with the partitioning and retention documented in docs/topics.md.

Faust creates only its internal topics (changelogs); source and output topics are ours. All
topics share one partition count, so a user's events, state changelog and updates sit in
partitions with the same number and land on the same worker.
"""

import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from stream.outages import patiently
from stream.settings import Settings

__all__ = [
    "changelog_topic",
    "ensure_changelog_topics",
    "ensure_topics",
    "state_tables",
    "topic_specs",
]

DAY_MS = 24 * 3600 * 1000


def topic_specs(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic name to its Kafka configs."""
    return {
        # kept 30 days so a new model version can be replayed over a month of history
        settings.events_topic: {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
        # latest version of each item, forever: a new worker reads the whole catalog
        settings.catalog_topic: {"cleanup.policy": "compact"},
        # text vectors of live items; a deleted item leaves a tombstone that compaction removes
        settings.item_vectors_topic: {"cleanup.policy": "compact"},
        settings.updates_topic: {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)},
        settings.dead_letter_topic: {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
    }


def state_tables(model_version: str) -> tuple[str, str]:
    """A worker's two tables for a model version: user states, and progress per events
    partition. A new checkpoint gets tables of its own, and never reads another's states."""
    return f"user-states-{model_version}", f"events-progress-{model_version}"


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog Faust keeps for `table` of the app `app_id`."""
    return f"{app_id}-{table}-changelog"


def ensure_topics(settings: Settings, only: list[str] | None = None) -> list[str]:
    """Create missing topics (all of them, or `only` these); return the names created.
    Existing topics are left as they are."""
    specs = topic_specs(settings)
    return _ensure(settings, {n: c for n, c in specs.items() if only is None or n in only})


def ensure_changelog_topics(settings: Settings, names: list[str]) -> list[str]:
    """Create a worker's missing table changelogs (compacted) before Faust starts.

    Faust would create them itself, but on a fresh app id it subscribes right after creating
    them, and a changelog missing from the broker's metadata at that moment is left out of the
    assignment; its first write then fails with PartitionsMismatch ("... has 0 partitions").
    """
    return _ensure(settings, {name: {"cleanup.policy": "compact"} for name in names})


def _ensure(settings: Settings, specs: dict[str, dict[str, str]]) -> list[str]:
    """Create what is missing, waiting out a broker outage (stream/outages.py)."""
    return patiently(
        lambda: _create_missing(settings, specs), "creating topics", settings.outage_budget
    )


def _create_missing(settings: Settings, specs: dict[str, dict[str, str]]) -> list[str]:
    admin = settings.cluster.admin(
        client_id="currents-admin", request_timeout_ms=10_000, bootstrap_timeout_ms=10_000
    )
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=configs)
            for name, configs in specs.items()
            if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing, wait_for_metadata=True)
            except TopicAlreadyExistsError:
                pass  # another worker created it between list and create
            _wait_for_leaders(admin, [topic.name for topic in missing])
        return [topic.name for topic in missing]
    finally:
        admin.close()


def _wait_for_leaders(admin: KafkaAdminClient, names: list[str], timeout: float = 30.0) -> None:
    """Return once every partition of `names` has a leader, so the first sends succeed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = admin.describe_topics(names)
        if all(p["leader_id"] >= 0 for topic in described for p in topic["partitions"]):
            return
        time.sleep(0.1)
