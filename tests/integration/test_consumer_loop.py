"""The consumer loop against the real broker: commit order, dead letters, retries, shutdown."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import TopicPartition
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common import contracts as c
from services.common.consumer import (
    ConsumerLoop,
    LoopSettings,
    Outcome,
    Output,
)
from services.common.errors import Permanent
from services.common.health import Readiness
from services.common.kafka import (
    H_DLQ_OFFSET,
    H_DLQ_REASON,
    headers_of,
    make_consumer,
    make_producer,
    send_event,
)
from services.common.topics import Topics

pytestmark = pytest.mark.integration

SOURCE_KEY = "generation.requested"


def _request(prompt: str) -> c.GenerationRequested:
    return c.GenerationRequested(job_id=c.new_job_id(), tenant="loop", spec=c.ImageSpec(prompt=prompt))


async def _send_all_to_partition_0(producer, topic: str, events: list[c.GenerationRequested]) -> None:
    for event in events:
        await producer.send_and_wait(topic, event.to_json_bytes(), key=event.job_id.encode(), partition=0)


async def _committed(connections, group: str, topic: str) -> int | None:
    consumer = make_consumer(connections.kafka, group_id=group)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()


async def _wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await _truth(predicate()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def _truth(value: bool | Awaitable[bool]) -> bool:
    return await value if inspect.isawaitable(value) else value


class _Running:
    """A ConsumerLoop running in the background of a test."""

    def __init__(self, connections, group: str, topic: str, handler, readiness: Readiness | None = None,
                 consumer_args: dict | None = None, **settings) -> None:
        self.connections, self.group, self.topic, self.handler, self.settings = connections, group, topic, handler, settings
        self.readiness = readiness
        self.consumer_args = consumer_args or {}

    async def __aenter__(self) -> _Running:
        self.consumer = make_consumer(self.connections.kafka, group_id=self.group, **self.consumer_args)
        self.producer = make_producer(self.connections.kafka)
        await self.consumer.start()
        await self.producer.start()
        self.loop = ConsumerLoop(self.consumer, self.producer, self.handler, LoopSettings(
            group_id=self.group, topics=[self.topic], **({"commit_interval_s": 0.1} | self.settings)), self.readiness)
        self.task = asyncio.create_task(self.loop.run())
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.loop.stop()
        await asyncio.wait_for(self.task, 30)
        await self.consumer.stop()
        await self.producer.stop()


async def test_a_slow_head_record_holds_the_commit_back(connections, topics, producer, unique):
    """faust-streaming #606: with concurrency, never commit past a record still in flight."""
    topic = Topics.from_settings(connections.topics).name(SOURCE_KEY)
    group = f"g-{unique}"
    events = [_request(f"item {i}") for i in range(5)]
    release_head = asyncio.Event()
    finished: list[str] = []

    async def handler(record) -> Outcome:
        event = c.decode(c.GenerationRequested, record.value)
        if event.job_id == events[0].job_id:
            await release_head.wait()
        finished.append(event.job_id)
        return Outcome()

    await _send_all_to_partition_0(producer, topic, events)
    async with _Running(connections, group, topic, handler, concurrency=5) as running:
        await _wait_for(lambda: len(finished) == 4)
        await asyncio.sleep(0.5)  # several commit ticks pass while the head is in flight
        held_back = await _committed(connections, group, topic)
        release_head.set()
        await _wait_for(lambda: _committed_is(connections, group, topic, 5))
        assert running.task.done() is False

    assert held_back in (None, 0), f"committed {held_back} while offset 0 was still in flight"
    assert sorted(finished) == sorted(e.job_id for e in events)


async def _committed_is(connections, group, topic, offset) -> bool:
    return await _committed(connections, group, topic) == offset


async def test_outputs_are_acknowledged_before_the_commit(connections, topics, producer, unique):
    names = Topics.from_settings(connections.topics)
    source, sink = names.name(SOURCE_KEY), names.name("generation.primary")
    group = f"g-{unique}"
    event = _request("forwarded")

    async def handler(record) -> Outcome:
        request = c.decode(c.GenerationRequested, record.value)
        decision = c.RouteDecision(path="primary", reason="test", primary_depth=0, threshold=50)
        return Outcome([Output(sink, c.GenerationRouted.from_request(request, decision))])

    await _send_all_to_partition_0(producer, source, [event])
    async with _Running(connections, group, source, handler):
        await _wait_for(lambda: _committed_is(connections, group, source, 1))

    reader = make_consumer(connections.kafka, sink, group_id=None)
    await reader.start()
    try:
        record = await asyncio.wait_for(reader.getone(), 20)
    finally:
        await reader.stop()
    forwarded = c.decode(c.GenerationRouted, record.value)
    assert (forwarded.job_id, forwarded.spec.prompt) == (event.job_id, "forwarded")


async def test_garbage_goes_to_the_dlq_and_the_partition_keeps_moving(connections, topics, producer, unique):
    names = Topics.from_settings(connections.topics)
    source, dlq = names.name(SOURCE_KEY), names.dlq(SOURCE_KEY)
    group = f"g-{unique}"
    good = _request("after the garbage")
    handled: list[str] = []

    async def handler(record) -> Outcome:
        handled.append(c.decode(c.GenerationRequested, record.value).job_id)
        return Outcome()

    await producer.send_and_wait(source, b"\x00 definitely not json", key=b"garbage-1", partition=0)
    await send_event(producer, source, good)
    reader = make_consumer(connections.kafka, dlq, group_id=None)
    await reader.start()
    try:
        async with _Running(connections, group, source, handler):
            letter = await asyncio.wait_for(reader.getone(), 30)
            await _wait_for(lambda: good.job_id in handled)
    finally:
        await reader.stop()

    headers = headers_of(letter)
    assert letter.value == b"\x00 definitely not json"
    assert "invalid GenerationRequested" in headers[H_DLQ_REASON]
    assert headers[H_DLQ_OFFSET] == "0"


async def _first_dead_letter(connections, producer, unique, events: list[c.GenerationRequested], handler):
    """Send ``events``, run ``handler`` over them (4 attempts, quick backoff), return the first dead letter."""
    names = Topics.from_settings(connections.topics)
    source, dlq = names.name(SOURCE_KEY), names.dlq(SOURCE_KEY)
    await _send_all_to_partition_0(producer, source, events)
    reader = make_consumer(connections.kafka, dlq, group_id=None)
    await reader.start()
    try:
        async with _Running(connections, f"g-{unique}", source, handler, max_attempts=4, backoff_base_s=0.01):
            return await asyncio.wait_for(reader.getone(), 30)
    finally:
        await reader.stop()


async def test_unclassified_errors_are_retried_then_dead_lettered(connections, topics, producer, unique):
    flaky, doomed = _request("flaky"), _request("doomed")
    calls: dict[str, int] = {}

    async def handler(record) -> Outcome:
        job = c.decode(c.GenerationRequested, record.value).job_id
        calls[job] = calls.get(job, 0) + 1
        if job == doomed.job_id or calls[job] < 3:
            raise KeyError("a bug nobody classified")
        return Outcome()

    letter = await _first_dead_letter(connections, producer, unique, [flaky, doomed], handler)

    assert calls[flaky.job_id] == 3
    assert calls[doomed.job_id] == 4
    assert letter.key == doomed.job_id.encode()
    assert "after 4 attempts" in headers_of(letter)[H_DLQ_REASON]


async def test_a_dependency_outage_is_waited_out_not_dead_lettered(connections, topics, producer, unique):
    """Redis down for longer than every attempt's backoff put together: the record waits, the
    service says not ready, fetches nothing new meanwhile, and nothing reaches the DLQ."""
    names = Topics.from_settings(connections.topics)
    source, dlq = names.name(SOURCE_KEY), names.dlq(SOURCE_KEY)
    first, second = _request("during the outage"), _request("sent while redis is down")
    redis_up = asyncio.Event()
    calls: list[str] = []
    readiness = Readiness()

    async def handler(record) -> Outcome:
        job = c.decode(c.GenerationRequested, record.value).job_id
        calls.append(job)
        if not redis_up.is_set():
            raise RedisConnectionError("Connection refused")
        return Outcome()

    await _send_all_to_partition_0(producer, source, [first])
    async with _Running(connections, f"g-{unique}", source, handler, readiness=readiness,
                        max_attempts=2, backoff_base_s=0.01, outage_backoff_max_s=0.2):
        await _wait_for(lambda: calls.count(first.job_id) >= 5)
        assert readiness.report().get("redis", "").startswith("ConnectionError"), readiness.report()
        await _send_all_to_partition_0(producer, source, [second])
        await asyncio.sleep(1.5)  # the partition is paused: the second record is not started
        assert second.job_id not in calls
        redis_up.set()
        await _wait_for(lambda: second.job_id in calls)
        assert readiness.report()["redis"] == "ok"
    assert await _committed(connections, f"g-{unique}", source) == 2
    assert await _count(connections, dlq) == 0


async def test_outputs_once_acknowledged_are_never_dead_lettered(connections, topics, producer, unique):
    """on_acked fails (Redis gone) after the outputs were acknowledged: it is retried, the handler
    is not run again, the output is produced once, and the record is not dead-lettered."""
    names = Topics.from_settings(connections.topics)
    source, target, dlq = names.name(SOURCE_KEY), names.name("generation.primary"), names.dlq(SOURCE_KEY)
    event = _request("published, then redis blinked")
    handled, recorded = [], []

    async def record_published() -> None:
        recorded.append(1)
        if len(recorded) < 4:
            raise RedisConnectionError("Connection reset by peer")

    async def handler(record) -> Outcome:
        handled.append(1)
        decision = c.RouteDecision(path="primary", reason="test", primary_depth=0, threshold=50)
        routed = c.GenerationRouted.from_request(c.decode(c.GenerationRequested, record.value), decision)
        return Outcome([Output(target, routed)], on_acked=record_published)

    await _send_all_to_partition_0(producer, source, [event])
    async with _Running(connections, f"g-{unique}", source, handler, max_attempts=2, backoff_base_s=0.01,
                        outage_backoff_max_s=0.1):
        await _wait_for(lambda: len(recorded) == 4)
        await _wait_for(lambda: _committed_is(connections, f"g-{unique}", source, 1))
    assert handled == [1]
    assert await _count(connections, target) == 1
    assert await _count(connections, dlq) == 0


async def test_busy_slots_longer_than_the_poll_interval_keep_the_member(connections, topics, producer, unique):
    """Every slot busy for longer than max.poll.interval.ms: the loop keeps polling (paused), so the
    group does not drop the member and nothing is handled twice."""
    source = Topics.from_settings(connections.topics).name(SOURCE_KEY)
    slow, queued = _request("slow"), _request("behind it")
    calls: list[str] = []

    async def handler(record) -> Outcome:
        job = c.decode(c.GenerationRequested, record.value).job_id
        calls.append(job)
        if job == slow.job_id:
            await asyncio.sleep(7)
        return Outcome()

    await _send_all_to_partition_0(producer, source, [slow, queued])
    async with _Running(connections, f"g-{unique}", source, handler, concurrency=1, full_poll_s=0.5,
                        consumer_args={"max_poll_interval_ms": 3000}):
        await _wait_for(lambda: _committed_is(connections, f"g-{unique}", source, 2), timeout_s=40)
    assert calls == [slow.job_id, queued.job_id]


async def _count(connections, topic: str) -> int:
    """How many records ``topic`` holds (partition 0 and the rest)."""
    reader = make_consumer(connections.kafka, group_id=None)
    await reader.start()
    try:
        partitions = [TopicPartition(topic, p) for p in (reader.partitions_for_topic(topic) or ())]
        if not partitions:
            await reader._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in (reader.partitions_for_topic(topic) or ())]
        ends = await reader.end_offsets(partitions)
        starts = await reader.beginning_offsets(partitions)
        return sum(ends[tp] - starts[tp] for tp in partitions)
    finally:
        await reader.stop()


async def test_permanent_errors_are_dead_lettered_at_once(connections, topics, producer, unique):
    doomed = _request("doomed")
    calls: list[str] = []

    class Refused(Permanent):
        pass

    async def handler(record) -> Outcome:
        calls.append(c.decode(c.GenerationRequested, record.value).job_id)
        raise Refused("this record can never be processed")

    letter = await _first_dead_letter(connections, producer, unique, [doomed], handler)

    assert calls == [doomed.job_id]
    assert letter.key == doomed.job_id.encode()
    assert headers_of(letter)[H_DLQ_REASON] == "this record can never be processed"


async def test_stop_lets_in_flight_records_finish_and_commits_them(connections, topics, producer, unique):
    topic = Topics.from_settings(connections.topics).name(SOURCE_KEY)
    group = f"g-{unique}"
    started = asyncio.Event()

    async def handler(record) -> Outcome:
        started.set()
        await asyncio.sleep(0.5)
        return Outcome()

    await _send_all_to_partition_0(producer, topic, [_request("slow")])
    async with _Running(connections, group, topic, handler, commit_interval_s=60) as running:
        await asyncio.wait_for(started.wait(), 20)
        running.loop.stop()  # mid-record: the loop must finish it and commit before returning
        await asyncio.wait_for(running.task, 20)

    assert await _committed(connections, group, topic) == 1
