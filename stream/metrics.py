"""Prometheus metrics of one worker, served at GET /metrics."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """One registry per app, so several apps in one process never collide."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.events = Counter(
            "currents_events", "Valid events applied to user states.", registry=registry
        )
        self.dead_letters = Counter(
            "currents_dead_letters", "Records sent to the dead-letter topic.", ["kind"],
            registry=registry,
        )  # fmt: skip
        self.updates = Counter("currents_updates", "Interest updates published.", registry=registry)
        self.batch_events = Histogram(
            "currents_batch_events", "Records per micro-batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=registry,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "currents_step_seconds", "Model time per micro-batch (states, step, ranking).",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.update_latency = Histogram(
            "currents_update_latency_seconds",
            "From an event's append to Kafka to the publication of its interest update.",
            buckets=_LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.lag = Gauge(
            "currents_consumer_lag", "Events not yet processed, per events partition.",
            ["partition"], registry=registry,
        )  # fmt: skip
        self.repaired = Counter(
            "currents_repaired_events",
            "Events read straight from Kafka because Faust skipped them (see stream/progress.py).",
            registry=registry,
        )
        self.erasures = Counter(
            "currents_erasures", "Users forgotten: state deleted, tombstones published.",
            registry=registry,
        )  # fmt: skip
        self.items = Gauge("currents_items", "Items in this worker's matrix.", registry=registry)
        self.items_encoded = Counter(
            "currents_items_encoded", "Catalog upserts BERT-encoded by this worker.",
            registry=registry,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)
