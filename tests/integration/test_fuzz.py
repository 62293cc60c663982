"""A flood of bad records, interleaved with valid events, into a running worker: every bad one
is dead-lettered with its reason, every valid one applied once, the worker never restarts and
its memory stays bounded."""

import json
import random
from collections import Counter

import pytest
from campaign import reference, wait_until_exact
from support import behaviour, keyed, metric

from schemas import MAX_MESSAGE_BYTES, DeadLetter, ErrorKind
from stream.processes import wait_for

VALID = 4_000
U, S = ErrorKind.UNDECODABLE, ErrorKind.SCHEMA_VIOLATION
REQUIRED = ["event_id", "user_id", "item_id", "event_type", "timestamp"]
WRONG = {"dwell_ms": [-1, "5", 3.5, True, 10**12], "context": [[], 5, "x", {"k": 1}]}


def fuzzed(rng: random.Random, valid: list, users: list[str]):
    """(key, value, kinds it may be dead-lettered as): a record no worker may apply."""
    event = rng.choice(valid)
    raw = event.model_dump_json().encode()
    key = event.user_id.encode()
    fields = json.loads(raw)
    how = rng.randrange(12)
    if how in (7, 8) and rng.random() < 0.9:
        how = rng.randrange(7)  # large records stay few: a flood of them only tests the broker
    if how == 0:  # random bytes
        return key, rng.randbytes(rng.randrange(1, 300)), {U, S}  # b"7" is JSON, not an event
    if how == 1:  # truncated
        return key, raw[: rng.randrange(0, len(raw))], {U}  # no prefix of an object is JSON
    if how == 2:  # a byte that is not UTF-8, anywhere
        at = rng.randrange(len(raw) + 1)
        return key, raw[:at] + bytes([rng.randrange(0x80, 0x100)]) + raw[at:], {U}
    if how == 3:  # a structural character replaced
        at = rng.choice([i for i, c in enumerate(raw) if c in b'{}":,'])
        return key, raw[:at] + rng.choice([b"'", b";", b"", b"\\"]) + raw[at + 1 :], {U, S}
    if how == 4:  # wrong types
        name = rng.choice(REQUIRED + ["dwell_ms", "context"])
        fields[name] = rng.choice(WRONG.get(name, [True, None, 3.5, [], {}, "", "x" * 200]))
        return key, json.dumps(fields).encode(), {S}
    if how == 5:  # a required field missing, or one too many
        if rng.random() < 0.5:
            del fields[rng.choice(REQUIRED)]
        else:
            fields[rng.choice(["extra", "userId", "EVENT_ID"])] = 1
        return key, json.dumps(fields).encode(), {S}
    if how == 6:  # keyed by another user, or by nothing at all
        other = rng.choice([u for u in users if u != event.user_id]).encode()
        return (
            (other, raw, {ErrorKind.KEY_MISMATCH})
            if rng.random() < 0.7
            else (None, raw, {ErrorKind.MISSING_KEY})
        )
    if how == 7:  # oversize
        return (
            key,
            b'{"pad": "' + b"x" * (MAX_MESSAGE_BYTES + rng.randrange(1, 4096)) + b'"}',
            {ErrorKind.OVERSIZE},
        )
    if how == 8:  # deep JSON
        depth = rng.randrange(100, 30_000)
        return key, b"[" * depth + b"]" * depth, {U, S}
    if how == 9:  # an item the catalog does not have
        fields["item_id"] = f"ghost-{rng.randrange(10**9)}"
        return key, json.dumps(fields).encode(), {ErrorKind.UNKNOWN_ITEM}
    if how == 10:  # no value at all (a tombstone), or JSON that is not an object
        return key, rng.choice([None, b"null", b"[]", b"1", b'"event"']), {U, S}
    # a valid event with a string value broken: control characters, a huge id
    fields["event_id"] = rng.choice(["\x00", "a\nb", "x" * 129])
    return key, json.dumps(fields).encode(), {S}


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def dead_letters(settings, count: int, timeout: float = 300) -> dict[tuple[int, int], DeadLetter]:
    """The first `count` dead letters, by the (partition, offset) of the record they reject."""
    letters: dict[tuple[int, int], DeadLetter] = {}
    consumer = settings.cluster.consumer(
        settings.dead_letter_topic, auto_offset_reset="earliest", consumer_timeout_ms=2000
    )

    def read() -> bool:
        for record in consumer:
            letter = DeadLetter.model_validate_json(record.value)
            letters[(letter.partition, letter.offset)] = letter
        return len(letters) >= count

    try:
        wait_for(read, timeout, 0, "dead letters")
    finally:
        consumer.close()
    return letters


@pytest.mark.parametrize(
    "bad_count", [20_000, pytest.param(100_000, marks=pytest.mark.campaign)], ids=["20k", "100k"]
)
def test_a_flood_of_fuzzed_records_is_dead_lettered_and_every_valid_event_applied(
    engine_settings, start_worker, catalog, checkpoint_path, tmp_path, bad_count
):
    rng = random.Random(2027)
    events = behaviour(catalog, users=50, events=VALID, seed=29)
    users = sorted({e.user_id for e in events})
    valid = keyed(events, "user_id")
    expected = reference(checkpoint_path, catalog, tmp_path / "vectors", events)
    worker = start_worker(engine_settings)
    worker.wait_ready()
    pid, topic = worker.process.pid, engine_settings.events_topic
    producer = engine_settings.cluster.producer(acks="all", linger_ms=20)
    for key, value in valid[:200]:
        producer.send(topic, key=key, value=value)
    producer.flush()
    wait_for(lambda: metric(worker, "currents_events_total") >= 200, 60, what="warm-up applied")
    rss_before = rss_mib(pid)

    sends = []  # (future, the kinds a bad record may be dead-lettered as; None: valid)
    valid_at = set(rng.sample(range(bad_count + VALID - 200), VALID - 200))
    rest = iter(valid[200:])
    for n in range(bad_count + VALID - 200):
        key, value, kinds = next(rest) + (None,) if n in valid_at else fuzzed(rng, events, users)
        sends.append((producer.send(topic, key=key, value=value), kinds))
    producer.flush()
    bad = {}
    for future, kinds in sends:
        if kinds is not None:
            sent = future.get()
            bad[(sent.partition, sent.offset)] = kinds
    producer.close()

    wait_until_exact(
        engine_settings, checkpoint_path, expected, 600, "valid events in the flood", worker.alive
    )
    letters = dead_letters(engine_settings, len(bad))
    rss_after = rss_mib(pid)
    assert letters.keys() == bad.keys()
    wrong = [
        (where, letter.error_kind, letter.reason)
        for where, letter in letters.items()
        if letter.error_kind not in bad[where] or not letter.reason
    ]
    assert wrong == []
    assert worker.alive() and worker.process.pid == pid, worker.tail()
    assert "CRITICAL" not in worker.log.read_text(), worker.tail()
    kinds = Counter(letter.error_kind.value for letter in letters.values())
    print(f"\nRSS {rss_before:.0f} MiB before the flood, {rss_after:.0f} MiB after; {kinds}")
    assert rss_after < rss_before + 200, (rss_before, rss_after)
