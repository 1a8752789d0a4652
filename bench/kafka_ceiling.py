"""The ceiling: what a bare aiokafka chain shaped like the generation path carries on this machine.

The pipeline's four hops, without Forgeline: a source produces to ``generation.requested``;
three relay processes (the router's, the generator's and storage's place) each consume a topic,
produce one record per record to the next and commit a batch's offsets once its sends are
acknowledged; a sink reads ``generation.completed``. Producers and consumers are built by
``services.common.kafka`` (idempotent, ``acks=all``, zstd, linger 5 ms, read_committed, no
auto-commit) on topics created by ``services.common.topics``, so settings match the pipeline's.
Record sizes follow the pipeline's: about 1 KB of JSON on every hop but ``generation.generated``,
which carries an image as base64 (``--image-bytes``, default 40 KB, incompressible like a PNG).

    python bench/kafka_ceiling.py -n 3000                 # flood: msgs/s through all four hops
    python bench/kafka_ceiling.py -n 1000 --rate 100      # offered 100 msgs/s: latency p50/p99

``bench/e2e.py`` runs the same measurement in its own run (see :func:`measure`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import time
import uuid
from dataclasses import dataclass

from services import devstack
from services.common.kafka import make_admin, make_consumer, make_producer
from services.common.settings import KafkaSettings, TopicSettings
from services.common.topics import Topics, create_topics, delete_topics

HOPS = ("generation.requested", "generation.primary", "generation.generated", "generation.completed")
JSON_BYTES = 1024


@dataclass(frozen=True)
class Figures:
    """What one run measured: throughput from first send to last receipt, and per-message latency."""

    messages: int
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    offered: float | None  # msgs/s offered, None for a flood


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def payload(sent_at: float, index: int, topic_key: str, image_bytes: int) -> bytes:
    """A record like the pipeline's on ``topic_key``: JSON of about 1 KB, or one with an image in base64."""
    body = {"sent_at": sent_at, "job_id": f"{index:032x}", "tenant": "bench",
            "spec": {"prompt": f"bench sword {index}", "width": 256, "height": 256}}
    if topic_key == "generation.generated":
        body["image"] = base64.b64encode(os.urandom(image_bytes)).decode()
    raw = json.dumps(body)
    return (raw[:-1] + ', "pad": "' + "x" * max(0, JSON_BYTES - len(raw) - 12) + '"}').encode()


def _relay(bootstrap: str, prefix: str, hop: int, image_bytes: int) -> None:
    asyncio.run(_relay_async(KafkaSettings(bootstrap=bootstrap), Topics(prefix), hop, image_bytes))


async def _relay_async(kafka: KafkaSettings, topics: Topics, hop: int, image_bytes: int) -> None:
    """Consume ``HOPS[hop - 1]``, produce each record's successor to ``HOPS[hop]``, commit after the acks."""
    source, target = HOPS[hop - 1], HOPS[hop]
    consumer = make_consumer(kafka, topics.name(source), group_id=f"{topics.prefix}.relay{hop}")
    producer = make_producer(kafka)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            sends = []
            for records in batches.values():
                for record in records:
                    sent_at = json.loads(record.value)["sent_at"]
                    value = payload(sent_at, record.offset, target, image_bytes)
                    sends.append(await producer.send(topics.name(target), value=value, key=record.key))
            if sends:
                await asyncio.gather(*sends)
                await consumer.commit()  # the positions of what was fetched, now that its outputs are acked
    finally:
        await consumer.stop()
        await producer.stop()


async def _source(kafka: KafkaSettings, topics: Topics, n: int, rate: float | None, image_bytes: int) -> None:
    producer = make_producer(kafka)
    await producer.start()
    try:
        began = time.monotonic()
        pending = []
        for i in range(n):
            if rate:
                await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
            value = payload(time.time(), i, HOPS[0], image_bytes)
            pending.append(await producer.send(topics.name(HOPS[0]), value=value, key=uuid.uuid4().hex.encode()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def _sink(kafka: KafkaSettings, topics: Topics, n: int, latencies: list[float], ready: asyncio.Event) -> float:
    consumer = make_consumer(kafka, topics.name(HOPS[-1]), group_id=None)
    await consumer.start()
    ready.set()
    try:
        while len(latencies) < n:
            batches = await consumer.getmany(timeout_ms=500)
            now = time.time()
            latencies += [now - json.loads(r.value)["sent_at"] for rs in batches.values() for r in rs]
        return time.time()
    finally:
        await consumer.stop()


async def measure(bootstrap: str, n: int, rate: float | None, *, partitions: int = 6,
                  image_bytes: int = 40 * 1024) -> Figures:
    """One run on fresh topics: ``n`` messages, flooded (``rate=None``) or offered at ``rate`` msgs/s."""
    kafka = KafkaSettings(bootstrap=bootstrap)
    settings = TopicSettings(prefix=f"ceiling-{uuid.uuid4().hex[:8]}", partitions=partitions)
    topics = Topics(settings.prefix)
    admin = make_admin(kafka)
    await admin.start()
    await create_topics(admin, settings)
    spawn = multiprocessing.get_context("spawn")
    relays = [spawn.Process(target=_relay, args=(bootstrap, settings.prefix, hop, image_bytes), daemon=True)
              for hop in range(1, len(HOPS))]
    try:
        for relay in relays:
            relay.start()
        # Warm-up: every relay has joined its group and moved one message before the clock starts.
        warm: list[float] = []
        ready = asyncio.Event()
        sink = asyncio.create_task(_sink(kafka, topics, 1, warm, ready))
        await ready.wait()
        await _source(kafka, topics, 1, None, image_bytes)
        await asyncio.wait_for(sink, timeout=120)

        latencies: list[float] = []
        ready = asyncio.Event()
        sink = asyncio.create_task(_sink(kafka, topics, n, latencies, ready))
        await ready.wait()
        began = time.time()
        await _source(kafka, topics, n, rate, image_bytes)
        finished = await asyncio.wait_for(sink, timeout=max(300.0, n / 10))
    finally:
        for relay in relays:
            relay.terminate()
            relay.join(10)
        await delete_topics(admin, settings)
        await admin.close()
    ms = [v * 1000 for v in latencies[:n]]
    return Figures(messages=n, msgs_per_s=n / (finished - began), p50_ms=percentile(ms, 50),
                   p99_ms=percentile(ms, 99), offered=rate)


def describe(figures: Figures) -> str:
    offered = f"offered {figures.offered:.0f} msgs/s" if figures.offered else "flood"
    return (f"{offered}: {figures.messages} msgs, {figures.msgs_per_s:.1f} msgs/s, "
            f"p50 {figures.p50_ms:.1f} ms, p99 {figures.p99_ms:.1f} ms")


def local_bootstrap() -> str:
    stack = devstack.DevStackSettings()
    if not all(s.answers for s in devstack.status(stack)):
        raise SystemExit("the local stack is not running: start it with `forgeline dev up` (or `make up`)")
    return devstack.env(stack)["FORGELINE_KAFKA_BOOTSTRAP"]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000, help="messages per run (default 3000)")
    parser.add_argument("--rate", type=float, default=None, help="offered msgs/s (default: flood)")
    parser.add_argument("--runs", type=int, default=3, help="runs; the median is printed last (default 3)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--image-bytes", type=int, default=40 * 1024, help="image size on generation.generated")
    args = parser.parse_args()
    bootstrap = local_bootstrap()
    runs = []
    for run in range(args.runs):
        figures = await measure(bootstrap, args.n, args.rate, partitions=args.partitions, image_bytes=args.image_bytes)
        print(f"run {run + 1}: {describe(figures)}", flush=True)
        runs.append(figures)
    print(f"median of {args.runs}: {describe(median(runs))}")


def median(runs: list[Figures]) -> Figures:
    """Each figure's median over ``runs`` (separately: the run with the median rate need not have the median p99)."""
    def pick(attr: str) -> float:
        return sorted(getattr(r, attr) for r in runs)[len(runs) // 2]

    return Figures(messages=runs[0].messages, msgs_per_s=pick("msgs_per_s"), p50_ms=pick("p50_ms"),
                   p99_ms=pick("p99_ms"), offered=runs[0].offered)


if __name__ == "__main__":
    asyncio.run(main())
