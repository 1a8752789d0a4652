"""The process's producer replaces aiokafka's idempotent one once it has failed for good."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import KafkaTimeoutError, OutOfOrderSequenceNumber

from services.common.kafka import RenewingProducer
from services.common.outages import is_outage


class _Producer:
    """What RenewingProducer uses of AIOKafkaProducer; each delivery fails with ``fail`` if set."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail, self.sent, self.started, self.stopped = fail, [], False, False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic, value=None, key=None, **kwargs) -> asyncio.Future:
        self.sent.append((topic, value))
        future = asyncio.get_running_loop().create_future()
        if self.fail is None:
            future.set_result(len(self.sent))
        else:
            future.set_exception(self.fail)
        return future


async def test_a_fatal_delivery_error_makes_the_next_send_use_a_new_producer():
    made = iter([_Producer(OutOfOrderSequenceNumber()), _Producer()])
    kept: list[_Producer] = []

    def make() -> _Producer:
        kept.append(next(made))
        return kept[-1]

    producer = RenewingProducer(make)
    await producer.start()

    with pytest.raises(OutOfOrderSequenceNumber) as failed:
        await producer.send_and_wait("t", b"first")
    assert is_outage(failed.value), "the consumer loop waits it out instead of dead-lettering"
    await asyncio.sleep(0)  # the delivery's done callback
    assert await producer.send_and_wait("t", b"again") == 1

    assert kept[0].stopped and kept[1].started and producer.renewals == 1
    assert kept[1].sent == [("t", b"again")]


async def test_an_ordinary_failure_keeps_the_producer():
    made: list[_Producer] = []

    def make() -> _Producer:
        made.append(_Producer(KafkaTimeoutError()))
        return made[-1]

    producer = RenewingProducer(make)
    for _ in range(2):
        with pytest.raises(KafkaTimeoutError):
            await producer.send_and_wait("t", b"x")
    assert len(made) == 1 and producer.renewals == 0
