"""What losing one broker of three costs a producer: the longest wait for an ``acks=all`` acknowledgement.

Starts its own three-broker cluster (``forgeline dev up --brokers 3``'s components) in a throwaway
state folder on free ports, creates one topic with replication factor 3 and
``min.insync.replicas=2``, and produces to it one record at a time, as ingest does. First a
baseline (no fault), then with each fault injected into the partition's leader while records
flow: ``kill -9`` (the controllers notice when its session times out) and SIGTERM (a controlled
shutdown hands leadership over first). After each, the broker is started again and the run waits
until it is back in the ISR. Prints the baseline's p50 and max acknowledgement time, then per
fault the longest wait of any record and its ratio to the baseline p50.

    python bench/kafka_failover.py
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError

from services.common.kafka import make_admin, make_producer
from services.common.settings import KafkaSettings
from services.devstack import DevStackSettings, KafkaCluster, down, up
from services.devstack.process import free_port_run

TOPIC = "bench.failover"


async def leader_and_isr(admin) -> tuple[int, list[int]]:
    """Partition 0's leader (-1 while the new topic has none yet) and its in-sync replicas."""
    for _attempt in range(60):  # the admin client may first ask the broker that was just stopped
        try:
            (topic,) = await admin.describe_topics([TOPIC])
            break
        except KafkaError:
            await asyncio.sleep(0.5)
    else:
        raise RuntimeError("no broker answered a metadata request for 30 s")
    partitions = topic["partitions"]
    return (partitions[0]["leader"], sorted(partitions[0]["isr"])) if partitions else (-1, [])


async def acknowledgement_times(producer, seconds: float) -> list[float]:
    """Send one record at a time for ``seconds``; each record's wait for its acknowledgement."""
    waits: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        await producer.send_and_wait(TOPIC, b"x" * 1024, key=str(len(waits)).encode())
        waits.append(time.perf_counter() - began)
    return waits


async def run(cluster: KafkaCluster, *, seconds: float) -> None:
    kafka = KafkaSettings(bootstrap=cluster.bootstrap)
    admin = make_admin(kafka)
    await admin.start()
    producer = make_producer(kafka)
    try:
        await admin.create_topics([NewTopic(TOPIC, 1, 3, topic_configs={"min.insync.replicas": "2"})])
        while (await leader_and_isr(admin))[0] < 0:
            await asyncio.sleep(0.2)
        await producer.start()
        baseline = await acknowledgement_times(producer, seconds / 3)
        p50 = statistics.median(baseline)
        print(f"baseline: {len(baseline)} records, p50 {p50 * 1000:.1f} ms, max {max(baseline) * 1000:.1f} ms")
        for fault, inject in (("kill -9 of the leader", cluster.kill), ("SIGTERM of the leader", cluster.stop)):
            leader, _isr = await leader_and_isr(admin)
            flowing = asyncio.create_task(acknowledgement_times(producer, seconds))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(inject, leader)
            waits = await flowing
            new_leader, _isr = await leader_and_isr(admin)
            print(f"{fault} (broker {leader} → {new_leader}): {len(waits)} records, longest wait "
                  f"{max(waits):.2f} s = {max(waits) / p50:.0f}× the baseline p50")
            await asyncio.to_thread(cluster.start, leader)
            while (await leader_and_isr(admin))[1] != [1, 2, 3]:
                await asyncio.sleep(0.5)
    finally:
        await producer.stop()
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="How long records flow around each fault.")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its retry warnings during a fault are the expected ones
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as state:
        first = free_port_run(6)
        settings = DevStackSettings(state_dir=Path(state), kafka_port=first, kafka_controller_port=first + 1,
                                    kafka_brokers=3)
        up(settings, components=["kafka"])
        try:
            asyncio.run(run(KafkaCluster(settings), seconds=args.seconds))
        finally:
            down(settings)


if __name__ == "__main__":
    main()
