"""How long the local Kafka broker takes to start, and how much memory it holds.

Starts the dev stack's Kafka component in a throwaway state folder on free ports, ``--runs``
times (the first run of each state folder formats KRaft storage; later runs restart on it),
and prints per run: format + start time until the broker answers a metadata request, and its
resident memory once up and after a produce/consume round trip. Uses the shared jar cache, so
run ``forgeline dev up`` once first if the jars are not downloaded yet.

    python bench/stack_start.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from services.devstack.kafka import KafkaComponent, kafka_version
from services.devstack.process import free_ports
from services.devstack.settings import DevStackSettings


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def round_trip(bootstrap: str, *, topic: str, messages: int = 200) -> None:
    """Some real work, so the resident figure is not just an idle JVM."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 3, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    for i in range(messages):
        await producer.send(topic, b"x" * 1024, key=str(i).encode())
    await producer.flush()
    await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id="bench", auto_offset_reset="earliest")
    await consumer.start()
    seen = 0
    while seen < messages:
        batch = await consumer.getmany(timeout_ms=5000)
        seen += sum(len(records) for records in batch.values())
    await consumer.commit()
    await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--heap", default="512m")
    args = parser.parse_args()

    starts, idle, busy = [], [], []
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as state:
        kafka_port, controller_port = free_ports(2)
        settings = DevStackSettings(state_dir=Path(state), kafka_port=kafka_port,
                                    kafka_controller_port=controller_port, kafka_heap=args.heap)
        print(f"Kafka {kafka_version()} on 127.0.0.1:{kafka_port}, heap {args.heap}, {args.runs} runs")
        for run in range(1, args.runs + 1):
            kafka = KafkaComponent(settings)
            began = time.perf_counter()
            kafka.start()
            elapsed = time.perf_counter() - began
            pid = kafka.process.pid()
            assert pid is not None, "the broker did not leave a pid"
            idle_rss = rss_mib(pid)
            asyncio.run(round_trip(f"127.0.0.1:{kafka_port}", topic=f"bench-{run}"))
            busy_rss = rss_mib(pid)
            kafka.stop()
            kind = "format + start" if run == 1 else "restart"
            print(f"run {run}: {kind:14} {elapsed:5.2f} s to answer metadata; RSS {idle_rss:.0f} MiB up, "
                  f"{busy_rss:.0f} MiB after traffic")
            starts.append(elapsed)
            idle.append(idle_rss)
            busy.append(busy_rss)
    print(f"start to answering: median {statistics.median(starts):.2f} s, min {min(starts):.2f} s, "
          f"max {max(starts):.2f} s")
    print(f"resident memory: median {statistics.median(idle):.0f} MiB idle, max {max(busy):.0f} MiB")


if __name__ == "__main__":
    main()
