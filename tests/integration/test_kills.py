"""Three workers in one group, SIGKILLed at random moments of a paced stream and started again
by their supervisors: every event applied once, the states of an uninterrupted run. The long
campaign (ten kills over minutes) is bench/faults.py kills."""

import random

from campaign import (
    Changelog,
    PacedStream,
    assert_exact,
    kill_at_random,
    reference,
    supervise_until,
    wait_ready,
)
from support import behaviour, keyed

from stream.local_kafka import free_port
from stream.processes import Supervisor

RATE, SECONDS, KILLS = 150, 45, 3


def test_three_workers_killed_at_random_and_restarted_apply_every_event_once(
    engine_settings, catalog, checkpoint_path, tmp_path
):
    rng = random.Random(31)
    events = behaviour(catalog, users=80, events=RATE * SECONDS, seed=31)
    expected = reference(checkpoint_path, catalog, tmp_path / "vectors", events)
    settings = [
        engine_settings.model_copy(
            update={"web_port": free_port(), "data_dir": tmp_path / f"worker-{n}", "batch_size": 64}
        )
        for n in range(3)
    ]
    workers = [
        Supervisor(s, tmp_path / f"worker-{n}.log", say=print) for n, s in enumerate(settings)
    ]
    try:
        wait_ready(workers)
        stream = PacedStream(
            engine_settings.cluster, engine_settings.events_topic, keyed(events, "user_id"), RATE
        )
        stream.start()
        kill_at_random(workers, KILLS, SECONDS, rng)
        stream.finish()
        changelog = Changelog(engine_settings, checkpoint_path)
        supervise_until(workers, lambda: changelog.counts() == expected.counts, 240)
        assert_exact(changelog, expected, f"{KILLS} kills")
        changelog.close()
        assert sum(w.restarts for w in workers) == KILLS
    finally:
        for worker in workers:
            worker.stop()
