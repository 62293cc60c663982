"""Broker outages and stops, on a broker of this module's own that the tests stop and start.

A worker rides out a broker stopped for 15 s at any point of a paced stream, with every event
applied once and the states of an uninterrupted run; a broker away for longer than the outage
budget ends the worker with a one-line reason, and a restarted worker completes the stream;
SIGTERM ends a worker within 30 s whatever it is doing. The points of the campaign not run by
default (`-m campaign`) cost a minute and a half each.
"""

import re
import signal
import time

import pytest
from campaign import PacedStream, reference, wait_until_exact
from support import behaviour, keyed, metric, produce

from model.checkpoint import load_checkpoint
from schemas import ItemUpsert
from stream.local_kafka import LocalKafka, free_port
from stream.outages import EXIT_FATAL
from stream.processes import get_json, wait_for
from stream.records import UserRecord
from stream.topics import changelog_topic, state_tables

RATE, EVENTS, DOWN = 400, 10_000, 15.0  # 25 s of stream; the broker away for 15 s
STOP_BOUND = 30.0


@pytest.fixture(scope="module")
def outage_kafka(tmp_path_factory):
    kafka = LocalKafka(tmp_path_factory.mktemp("outage-kafka"), partitions=4)
    kafka.start()
    yield kafka
    kafka.stop()


@pytest.fixture()
def kafka_cluster(outage_kafka):
    """The module's broker for every fixture that needs one (conftest.settings_factory)."""
    if not outage_kafka.status()[0]["serving"]:
        outage_kafka.start()  # a failed test left it stopped
    return outage_kafka.cluster


@pytest.fixture(scope="module")
def stream_events(catalog):
    return behaviour(catalog, users=60, events=EVENTS, seed=27)


@pytest.fixture(scope="module")
def expected(checkpoint_path, catalog, stream_events, tmp_path_factory):
    return reference(checkpoint_path, catalog, tmp_path_factory.mktemp("vectors"), stream_events)


def start_stream(settings, events) -> PacedStream:
    stream = PacedStream(settings.cluster, settings.events_topic, keyed(events, "user_id"), RATE)
    stream.start()
    return stream


def stop_for(kafka: LocalKafka, seconds: float) -> None:
    kafka.stop()
    time.sleep(seconds)
    kafka.start()


def stop_within(worker, bound: float = STOP_BOUND) -> tuple[int, float]:
    """SIGTERM the worker; its exit code and how long it took (killed, and failing, past
    `bound`)."""
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    try:
        code = worker.process.wait(bound)
    except Exception:
        worker.kill()
        raise AssertionError(f"no exit {bound:.0f} s after SIGTERM\n{worker.tail()}") from None
    return code, time.monotonic() - started


OUTAGE_POINTS = [
    pytest.param(8.0, id="8s"),  # where a worker used to exit and lose 11,741 events (issue 27)
    pytest.param(-1.0, id="before-first-event", marks=pytest.mark.campaign),
    pytest.param(1.0, id="1s", marks=pytest.mark.campaign),
    pytest.param(20.0, id="20s", marks=pytest.mark.campaign),
]


@pytest.mark.parametrize("at", OUTAGE_POINTS)
def test_a_broker_outage_at_any_point_of_a_stream_is_ridden_out_exactly(
    outage_kafka, engine_settings, start_worker, stream_events, expected, checkpoint_path, at
):
    worker = start_worker(engine_settings)
    worker.wait_ready()
    if at < 0:  # the stream starts 5 s into the outage: the producer waits too
        outage_kafka.stop()
        time.sleep(5)
        stream = start_stream(engine_settings, stream_events)
        time.sleep(DOWN - 5)
        outage_kafka.start()
    else:
        stream = start_stream(engine_settings, stream_events)
        wait_for(lambda: stream.elapsed() >= at, 60, 0.05, "stream under way")
        stop_for(outage_kafka, DOWN)
    stream.finish()
    wait_until_exact(engine_settings, checkpoint_path, expected, 120, f"outage at {at} s")
    assert worker.alive(), worker.tail()
    log = worker.log.read_text()
    assert "CRITICAL" not in log, worker.tail()  # kafka-python logs tracebacks of resets: fine
    assert log.count("Unable connect to node") < 3000  # paced: 41,478 in 15 s before, 341-851 now
    assert stop_within(worker)[0] == 0, worker.tail()


@pytest.mark.campaign
def test_a_broker_outage_during_a_rebalance_is_ridden_out_exactly(
    outage_kafka, engine_settings, start_worker, stream_events, expected, checkpoint_path
):
    first = start_worker(engine_settings)
    first.wait_ready()
    stream = start_stream(engine_settings, stream_events)
    wait_for(lambda: stream.elapsed() >= 5, 60, 0.05, "stream under way")
    second_settings = engine_settings.model_copy(
        update={"web_port": free_port(), "data_dir": engine_settings.data_dir.parent / "second"}
    )
    second = start_worker(second_settings, "second")
    joining = lambda: "(Re-)joining group" in second.log.read_text()  # noqa: E731
    wait_for(joining, 120, 0.05, "second worker joining", process=second.process)
    stop_for(outage_kafka, DOWN)  # the group rebalances to give the second worker its share
    stream.finish()
    wait_until_exact(engine_settings, checkpoint_path, expected, 180, "outage in a rebalance")
    assert first.alive() and second.alive(), first.tail() + second.tail()
    assert stop_within(second)[0] == 0, second.tail()
    assert stop_within(first)[0] == 0, first.tail()


def test_an_outage_past_the_budget_ends_a_worker_sigterm_ends_another_a_restart_completes(
    outage_kafka, engine_settings, start_worker, stream_events, expected, checkpoint_path
):
    settings = engine_settings.model_copy(update={"outage_budget": 20.0})
    worker = start_worker(settings)
    other = start_worker(
        settings.model_copy(
            update={"web_port": free_port(), "data_dir": settings.data_dir.parent / "other"}
        ),
        "other",
    )
    worker.wait_ready()
    other.wait_ready()
    stream = start_stream(settings, stream_events)
    wait_for(lambda: stream.elapsed() >= 8, 60, 0.05, "stream under way")
    outage_kafka.stop()
    try:
        time.sleep(3)  # batches in flight wait for the broker
        stopped, took = stop_within(other)  # SIGTERM during the outage
        code = worker.process.wait(20 + 30)  # the budget, then the watch's period and a margin
        # a worker (re)started while Kafka is still away waits for it instead of exiting
        restarted = start_worker(settings.model_copy(update={"outage_budget": 90.0}))
        time.sleep(8)
        waited = restarted.alive()
    finally:
        outage_kafka.start()
    assert took < STOP_BOUND, other.tail()
    assert code == EXIT_FATAL, worker.tail()
    lines = worker.log.read_text().splitlines()
    critical = [n for n, line in enumerate(lines) if "CRITICAL" in line]
    assert len(critical) == 1, worker.tail()  # one line says why, with no traceback after it
    assert not lines[critical[0] + 1 :] or not lines[critical[0] + 1].startswith("Traceback")
    assert re.search(r"Kafka has not answered for 20 s, the outage budget", lines[critical[0]])

    assert waited, restarted.tail()
    assert "connecting to Kafka: Kafka unavailable" in restarted.log.read_text()
    stream.finish()
    wait_until_exact(settings, checkpoint_path, expected, 180, "restarted after the budget")
    assert stop_within(restarted)[0] == 0, restarted.tail()


def test_sigterm_while_the_catalog_is_encoded_at_start_ends_the_worker_within_30_s(
    engine_settings, start_worker, stream_events
):
    big = [
        ItemUpsert(item_id=f"extra-{n}", title=f"Extra item {n}", categories=["Jazz"],
                   description=f"Number {n} of a long catalog, each text its own.")
        for n in range(6000)
    ]  # fmt: skip
    produce(engine_settings.cluster, engine_settings.catalog_topic, keyed(big, "item_id"))
    produce(
        engine_settings.cluster,
        engine_settings.events_topic,
        keyed(stream_events[:500], "user_id"),
    )
    worker = start_worker(engine_settings)
    wait_for(lambda: metric(worker, "currents_items_encoded_total") > 0, 120, 0.2, "encoding")
    assert not get_json(worker.url("/health"))[1]["ready"]
    code, took = stop_within(worker)
    assert took < STOP_BOUND, worker.tail()


@pytest.mark.campaign
def test_sigterm_during_a_table_restore_ends_the_worker_within_30_s(
    engine_settings, start_worker, checkpoint_path, stream_events
):
    # A large changelog to restore: many versions of a few users' records
    version = load_checkpoint(checkpoint_path).version
    topic = changelog_topic(engine_settings.app_id, state_tables(version)[0])
    from stream.topics import ensure_changelog_topics

    ensure_changelog_topics(engine_settings, [topic])
    record = UserRecord(state=b"\0" * 100, prev_interest=b"\0" * 128).to_bytes()
    produce(
        engine_settings.cluster,
        topic,
        ((f"user-{n % 1000}".encode(), record) for n in range(400_000)),
    )
    worker = start_worker(engine_settings)
    restoring = lambda: (get_json(worker.url("/health"))[1] or {}).get("tables_restored") is False  # noqa: E731
    wait_for(restoring, 120, 0.2, "restoring", process=worker.process)
    code, took = stop_within(worker)
    assert took < STOP_BOUND, worker.tail()
