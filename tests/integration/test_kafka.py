"""Contracts through the real broker, DLQ copies, and idempotent topic creation."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from services.common import contracts as c
from services.common.kafka import (
    H_DLQ_OFFSET,
    H_DLQ_REASON,
    H_DLQ_TOPIC,
    H_TENANT,
    DeadLetter,
    headers_of,
    make_admin,
    make_consumer,
    send_event,
    send_to_dlq,
)
from services.common.topics import (
    TopicAdminError,
    Topics,
    create_topics,
    describe_topics,
    wait_for_topics,
)

pytestmark = pytest.mark.integration


async def _read_one(connections, topic: str, partition: int, offset: int):
    consumer = make_consumer(connections.kafka, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        return await asyncio.wait_for(consumer.getone(tp), timeout=20)
    finally:
        await consumer.stop()


async def test_contract_message_round_trips_through_the_broker(connections, topics, producer):
    topic = Topics.from_settings(connections.topics).name("generation.requested")
    sent = c.GenerationRequested(
        job_id=c.new_job_id(), tenant="studio-a",
        spec=c.ImageSpec(prompt="flaming obsidian greatsword", seed=7), metadata={"slot": "weapon"})

    meta = await send_event(producer, topic, sent)
    record = await _read_one(connections, topic, meta.partition, meta.offset)

    assert c.decode(c.GenerationRequested, record.value) == sent
    assert record.key == sent.job_id.encode()
    assert headers_of(record)[H_TENANT] == "studio-a"


async def test_a_large_image_event_fits(connections, topics, producer):
    topic = Topics.from_settings(connections.topics).name("generation.generated")
    image = bytes(range(256)) * (6 * 1024 * 1024 // 256)  # 6 MiB: ~8 MiB once base64
    sent = c.GenerationGenerated(
        job_id=c.new_job_id(), tenant="studio-a", spec=c.ImageSpec(prompt="big"), image=image,
        content_type="image/png", provider="test", deterministic=True,
        decision=c.RouteDecision(path="primary", reason="test", primary_depth=0, threshold=50))

    meta = await send_event(producer, topic, sent)
    record = await _read_one(connections, topic, meta.partition, meta.offset)

    assert c.decode(c.GenerationGenerated, record.value).image == image


async def test_dead_letter_keeps_the_original_bytes_and_says_why(connections, topics, producer):
    names = Topics.from_settings(connections.topics)
    source = names.name("generation.requested")
    meta = await producer.send_and_wait(source, value=b"{not json", key=b"job-123456", headers=[("x-app", b"game")])
    original = await _read_one(connections, source, meta.partition, meta.offset)

    dlq_meta = await send_to_dlq(producer, names.dlq("generation.requested"), original,
                                 DeadLetter(reason="invalid JSON", error_class="ContractError"), group_id="g")
    copy = await _read_one(connections, names.dlq("generation.requested"), dlq_meta.partition, dlq_meta.offset)

    headers = headers_of(copy)
    assert (copy.value, copy.key) == (b"{not json", b"job-123456")
    assert headers["x-app"] == "game"
    assert headers[H_DLQ_REASON] == "invalid JSON"
    assert (headers[H_DLQ_TOPIC], headers[H_DLQ_OFFSET]) == (source, str(meta.offset))


async def test_topics_create_twice_is_harmless_and_configs_are_as_asked(connections):
    settings = connections.topics.model_copy(update={"partitions": 4, "max_message_bytes": 12 * 1024 * 1024})
    admin = make_admin(connections.kafka)
    await admin.start()
    try:
        first = await create_topics(admin, settings)
        second = await create_topics(admin, settings)
        names = [name for name, _ in Topics.from_settings(settings).all_names()]
        described = await describe_topics(admin, names)
    finally:
        await admin.close()

    assert {o.status for o in first} == {"created"}
    assert {o.status for o in second} == {"exists"}
    assert all(o.warning is None for o in second)
    for name in names:
        assert described[name].partitions == 4
        assert described[name].configs["max.message.bytes"] == str(12 * 1024 * 1024)
        assert described[name].configs["compression.type"] == "zstd"


async def test_existing_topic_with_other_partitions_is_reported(connections):
    admin = make_admin(connections.kafka)
    await admin.start()
    try:
        await create_topics(admin, connections.topics.model_copy(update={"partitions": 2}))
        again = await create_topics(admin, connections.topics.model_copy(update={"partitions": 5}))
    finally:
        await admin.close()

    assert all(o.partitions == 2 and "has 2 partitions, settings ask for 5" in o.warning for o in again)


async def test_wait_for_topics_returns_once_they_exist_and_names_what_is_missing(connections):
    admin = make_admin(connections.kafka)
    await admin.start()
    try:
        with pytest.raises(TopicAdminError, match="does not exist. Create them with `forgeline topics create`"):
            await wait_for_topics(admin, connections.topics, timeout_s=0.5)
        await create_topics(admin, connections.topics)
        found = await wait_for_topics(admin, connections.topics, timeout_s=10)
    finally:
        await admin.close()

    assert set(found) == {name for name, _ in Topics.from_settings(connections.topics).all_names()}
