"""A Kafka client whose ``start()`` never finishes is given up and replaced (aiokafka issue #551).

Seen in the chaos suite: a generator restarted while the broker was restarting bootstrapped
against a broker that listed no brokers yet; when that one connection dropped, its idempotent
producer's ``start()`` waited for a producer id from "node id None" for good, and the generator
never became ready.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError

from services.common import kafka as kafka_module
from services.common.bootstrap import Infra
from services.common.kafka import RenewingProducer, start_within
from services.common.outages import is_outage


async def test_a_start_that_never_ends_is_a_connection_error_naming_the_client():
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(KafkaConnectionError, match="the producer did not start within 0s") as failed:
        await start_within(never, "the producer", timeout_s=0.05)
    assert never.cancelled(), "the hung start is cancelled, not left running"
    assert is_outage(failed.value), "callers wait it out like a broker that is not there"


async def test_a_start_that_finishes_in_time_is_awaited():
    async def start() -> None:
        await asyncio.sleep(0.01)

    await start_within(start(), "the consumer", timeout_s=5)


class _Client:
    """A client whose start hangs when ``hang`` is set."""

    def __init__(self, hang: bool) -> None:
        self.hang, self.started, self.closed = hang, False, False

    async def start(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        self.started = True

    async def close(self) -> None:
        self.closed = True


async def test_a_hung_start_is_closed_and_retried_on_a_new_client(monkeypatch):
    monkeypatch.setattr(kafka_module, "START_TIMEOUT_S", 0.05)
    made: list[_Client] = []

    def make() -> _Client:
        made.append(_Client(hang=len(made) < 2))  # the first two hang, the third starts
        return made[-1]

    async with AsyncExitStack() as stack:
        infra = Infra(connections=SimpleNamespace(kafka=SimpleNamespace(bootstrap="127.0.0.1:1")),
                      budget_settings=None, environ={}, topics=None, groups=None, keys=None, _stack=stack)
        client = await asyncio.wait_for(infra._started("the producer", make, _Client.start, _Client.close), 10)

        assert client is made[2] and client.started and not client.closed
        assert [c.closed for c in made[:2]] == [True, True], "each hung client is closed before the next"
        assert "the producer" in infra.readiness.report()["kafka"], "not ready while it retries, saying why"
    assert client.closed, "the started client closes with the stack"


async def test_a_renewed_producer_that_hangs_leaves_the_next_send_to_try_again(monkeypatch):
    monkeypatch.setattr(kafka_module, "START_TIMEOUT_S", 0.05)

    class _Producer:
        def __init__(self, hang: bool) -> None:
            self.hang, self.stopped, self.sent = hang, False, []

        async def start(self) -> None:
            if self.hang:
                await asyncio.Event().wait()

        async def stop(self) -> None:
            self.stopped = True

        async def send(self, topic, value=None, key=None, **kwargs):
            self.sent.append(value)
            future = asyncio.get_running_loop().create_future()
            future.set_result(len(self.sent))
            return future

    made = [_Producer(hang=False), _Producer(hang=True), _Producer(hang=False)]
    pending = iter(made)
    producer = RenewingProducer(lambda: next(pending))
    await producer.start()
    producer._dead = True  # as after OutOfOrderSequenceNumber

    with pytest.raises(KafkaConnectionError):
        await producer.send_and_wait("t", b"while the broker is half up")
    assert made[1].stopped, "the producer whose start hung is stopped"
    assert await producer.send_and_wait("t", b"later") == 1
    assert made[2].sent == [b"later"] and producer.renewals == 1
