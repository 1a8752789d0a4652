"""``forgeline dev up --brokers 3`` for real: three KRaft nodes, one killed, a leader elected, the node back.

A throwaway state folder and ports of its own (three brokers, each with a controller port) keep
it apart from any stack on the default ports. Selected on its own with ``-m cluster``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from services.common.kafka import make_admin, make_consumer, make_producer
from services.common.settings import KafkaSettings, TopicSettings
from services.common.topics import Topics, create_topics, describe_topics
from services.devstack import DevStackSettings, KafkaCluster, down, env, status, up
from services.devstack.process import free_port_run
from tests.helpers import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

ISR_TIMEOUT_S = 90  # a restarted broker catches up and rejoins every ISR; bounded so a failure is an error
DESCRIBE_TIMEOUT_S = 30  # the admin client finds a live broker after a kill


def _say(message: str) -> None:
    print(f"[cluster] {message}", flush=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    first = free_port_run(6)  # broker n: first + 2(n-1), its controller the port after it
    settings = DevStackSettings(state_dir=tmp_path_factory.mktemp("cluster"), kafka_port=first,
                                kafka_controller_port=first + 1, kafka_brokers=3)
    try:
        assert up(settings, components=["kafka"], progress=_say) == ["kafka", "kafka-2", "kafka-3"]
        yield KafkaCluster(settings)
    finally:
        down(settings, progress=_say)


async def _partition(admin, topic: str) -> dict:
    """Partition 0 as the cluster describes it.

    The admin client sends each request to a random broker of its last metadata, which may still
    name the one just killed: that is a retriable error, so the request goes again to another node.
    """
    deadline = asyncio.get_running_loop().time() + DESCRIBE_TIMEOUT_S
    while True:
        try:
            (described,) = await admin.describe_topics([topic])
            return next(p for p in described["partitions"] if p["partition"] == 0)
        except KafkaError as error:
            if not error.retriable or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _produce(kafka: KafkaSettings, topic: str, values: list[bytes]) -> None:
    producer = make_producer(kafka)  # idempotent, acks=all: each send waits for min.insync.replicas
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=value, partition=0)
    finally:
        await producer.stop()


async def _consume(kafka: KafkaSettings, topic: str, group: str, count: int) -> list[bytes]:
    """``count`` records of partition 0 through a consumer group (its coordinator lives on a replicated topic)."""
    consumer = make_consumer(kafka, topic, group_id=group)
    await consumer.start()
    seen: list[bytes] = []
    try:
        while len(seen) < count:
            batches = await consumer.getmany(timeout_ms=5000)
            seen.extend(record.value for records in batches.values() for record in records)
        await consumer.commit()
    finally:
        await consumer.stop()
    return seen


def test_status_lists_each_broker_on_its_own_port_and_folder(cluster: KafkaCluster) -> None:
    statuses = {s.name: s for s in status(cluster.settings) if s.name.startswith("kafka")}

    assert list(statuses) == ["kafka", "kafka-2", "kafka-3"]
    first = cluster.settings.kafka_port
    assert [s.address for s in statuses.values()] == [f"127.0.0.1:{first + offset}" for offset in (0, 2, 4)]
    for name, s in statuses.items():
        assert s.running and s.answers and "3 broker(s)" in s.detail, s
        assert s.log_path.parent == cluster.settings.state_dir / name
        assert (cluster.settings.state_dir / name / "data" / "meta.properties").is_file()
    assert env(cluster.settings)["FORGELINE_KAFKA_BOOTSTRAP"] == cluster.bootstrap


async def test_a_killed_leader_is_replaced_and_rejoins_after_a_restart(cluster: KafkaCluster, unique: str) -> None:
    kafka = KafkaSettings(bootstrap=cluster.bootstrap)
    topic_settings = cluster.topic_settings(TopicSettings(prefix=f"t-{unique}", partitions=3))
    topic = Topics.from_settings(topic_settings).name("generation.requested")
    admin = make_admin(kafka)
    await admin.start()
    killed = None
    try:
        await create_topics(admin, topic_settings)
        described = await describe_topics(admin, [topic])
        assert described[topic].configs["min.insync.replicas"] == "2"
        before = await _partition(admin, topic)
        assert sorted(before["replicas"]) == sorted(before["isr"]) == [1, 2, 3]

        first = [f"before-{i}".encode() for i in range(20)]
        await _produce(kafka, topic, first)
        leader = before["leader"]
        killed = leader
        pid = cluster.kill(leader)
        assert pid is not None and not pid_alive(pid)
        _say(f"killed broker {leader} (pid {pid}), the leader of {topic}[0]")

        second = [f"after-{i}".encode() for i in range(20)]
        await _produce(kafka, topic, second)  # lands on the two that are left: a new leader took over
        assert await _consume(kafka, topic, f"{topic_settings.prefix}.group", 40) == first + second
        after_kill = await _partition(admin, topic)
        assert after_kill["leader"] not in (leader, -1), after_kill

        assert cluster.start(leader, progress=_say)
        killed = None
        deadline = asyncio.get_running_loop().time() + ISR_TIMEOUT_S
        while sorted((rejoined := await _partition(admin, topic))["isr"]) != [1, 2, 3]:
            assert asyncio.get_running_loop().time() < deadline, f"broker {leader} never rejoined: {rejoined}"
            await asyncio.sleep(0.5)

        await _produce(kafka, topic, [b"back"])
        consumer = make_consumer(kafka, group_id=None)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.seek_to_end(TopicPartition(topic, 0))
            end = await consumer.position(TopicPartition(topic, 0))
            assert end == 41, "every acknowledged record is there once: no loss, no duplicate"
        finally:
            await consumer.stop()
    finally:
        await admin.close()
        if killed is not None:  # failed half-way: the next test needs the three brokers
            cluster.start(killed, progress=_say)


def test_down_stops_every_broker(cluster: KafkaCluster) -> None:
    pids = [b.process.pid() for b in cluster.brokers]
    assert all(pids)

    assert sorted(down(cluster.settings, components=["kafka"], progress=_say)) == ["kafka", "kafka-2", "kafka-3"]

    assert not any(pid_alive(pid) for pid in pids if pid)
    assert not any(s.running for s in status(cluster.settings) if s.name.startswith("kafka"))
    assert all((Path(b.data_dir) / ".kafka_cleanshutdown").is_file() for b in cluster.brokers), "clean shutdowns"
