"""Retrying Kafka calls through an outage, and the watch that bounds it, on a fake clock."""

import asyncio

import aiokafka.errors
import kafka.errors
import pytest

from stream.connection import BrokerUnreachable, ConnectionFailed
from stream.outages import BrokerUnavailable, BrokerWatch, patiently, retriable


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def failing(times: int, error: Exception, clock: Clock):
    calls = []

    def call():
        calls.append(clock.now)
        if len(calls) <= times:
            raise error
        return "answer"

    return call, calls


def test_a_call_is_retried_with_growing_delays_until_kafka_answers():
    clock = Clock()
    call, calls = failing(4, kafka.errors.NodeNotReadyError(), clock)
    assert patiently(call, "a read", 60, clock, clock.sleep) == "answer"
    assert [b - a for a, b in zip(calls, calls[1:], strict=False)] == [0.5, 1.0, 2.0, 4.0]


def test_past_the_budget_a_call_raises_a_one_line_reason():
    clock = Clock()
    call, calls = failing(1000, kafka.errors.KafkaTimeoutError("offsets\nmore"), clock)
    with pytest.raises(BrokerUnavailable) as raised:
        patiently(call, "the hole reader", 30, clock, clock.sleep)
    assert clock.now <= 30
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith("the hole reader: Kafka has not answered for 30 s")


def test_an_error_an_outage_does_not_cause_is_raised_at_once():
    clock = Clock()
    call, calls = failing(1, kafka.errors.TopicAuthorizationFailedError(), clock)
    with pytest.raises(kafka.errors.TopicAuthorizationFailedError):
        patiently(call, "a read", 60, clock, clock.sleep)
    assert len(calls) == 1
    assert not retriable(ValueError("bad input"))
    assert retriable(aiokafka.errors.KafkaConnectionError())
    assert retriable(aiokafka.errors.KafkaError("Unable to get cluster metadata"))


def test_a_broker_that_does_not_answer_is_waited_for_one_that_refuses_is_not():
    clock = Clock()
    call, calls = failing(3, BrokerUnreachable("127.0.0.1:9092: Connection refused"), clock)
    assert patiently(call, "connecting to Kafka", 60, clock, clock.sleep) == "answer"
    call, calls = failing(3, ConnectionFailed("authentication failed"), clock)
    with pytest.raises(ConnectionFailed, match="authentication failed"):
        patiently(call, "connecting to Kafka", 60, clock, clock.sleep)
    assert len(calls) == 1


def test_the_watch_gives_up_only_after_the_budget_without_an_answer():
    clock, answers = Clock(), [True, False, False, False, True, False, False]

    async def probe():
        if not answers.pop(0):
            raise aiokafka.errors.KafkaConnectionError("refused")

    async def run():
        watch = BrokerWatch(20, probe, clock)
        for _ in range(5):  # answered, then 15 s of silence, then answered again
            await watch.check()
            clock.sleep(5)
        await watch.check()  # 5 s of silence since the last answer
        clock.sleep(16)
        with pytest.raises(BrokerUnavailable, match="not answered for 20 s"):
            await watch.check()  # 21 s

    asyncio.run(run())
