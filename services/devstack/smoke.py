"""`forgeline dev check`: prove the local stack works, one real round trip per component.

1. Kafka: create the topics, produce a ``GenerationRequested`` to the requested topic, read
   that very record back from its partition and offset, and compare the decoded model.
2. Redis: set a key with a TTL, read it and its TTL back.
3. S3: upload a PNG, then fetch its public URL over plain HTTP, as a browser would.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time

import httpx
from aiokafka import TopicPartition
from PIL import Image, ImageDraw
from rich.console import Console

from services.common import contracts
from services.common.blobstore import S3BlobStore
from services.common.kafka import make_admin, make_consumer, make_producer, send_event
from services.common.redis import KeySpace, make_redis
from services.common.settings import Connections
from services.common.topics import Topics, create_topics


def demo_png(text: str, size: int = 128) -> bytes:
    """A small PNG with ``text`` on it."""
    image = Image.new("RGB", (size, size), (24, 24, 40))
    draw = ImageDraw.Draw(image)
    draw.ellipse((16, 16, size - 16, size - 16), fill=(230, 120, 40))
    draw.text((8, size // 2 - 6), text[:18], fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def _kafka_round_trip(connections: Connections, say) -> bool:
    topics = Topics.from_settings(connections.topics)
    admin = make_admin(connections.kafka)
    await asyncio.wait_for(admin.start(), timeout=15)
    try:
        outcomes = await create_topics(admin, connections.topics)
    finally:
        await admin.close()
    say(f"topics ready: {sum(o.status == 'created' for o in outcomes)} created, {len(outcomes)} in all")

    event = contracts.GenerationRequested(
        job_id=contracts.new_job_id(),
        tenant="demo",
        spec=contracts.ImageSpec(prompt="flaming obsidian greatsword", seed=7),
        metadata={"source": "forgeline demo"},
    )
    producer = make_producer(connections.kafka)
    await producer.start()
    try:
        started = time.perf_counter()
        meta = await send_event(producer, topics.name("generation.requested"), event)
        say(f"produced job {event.job_id} to {meta.topic}[{meta.partition}]@{meta.offset} "
            f"in {(time.perf_counter() - started) * 1000:.1f} ms (acks=all)")
    finally:
        await producer.stop()

    consumer = make_consumer(connections.kafka, group_id=None)
    await consumer.start()
    try:
        partition = TopicPartition(meta.topic, meta.partition)
        consumer.assign([partition])
        consumer.seek(partition, meta.offset)
        record = await asyncio.wait_for(consumer.getone(partition), timeout=15)
    finally:
        await consumer.stop()
    decoded = contracts.decode(contracts.GenerationRequested, record.value)
    same = decoded == event
    say(f"consumed it back: prompt {decoded.spec.prompt!r}, equal to what was sent: {same}")
    return same


async def _redis_round_trip(connections: Connections, say) -> bool:
    redis = make_redis(connections.redis)
    try:
        key = KeySpace(connections.redis.key_prefix).key("demo", contracts.new_job_id())
        await redis.set(key, b"hello from forgeline", ex=60)
        value, ttl = await redis.get(key), await redis.ttl(key)
        say(f"SET {key} EX 60 → GET {value!r}, TTL {ttl}s")
        return value == b"hello from forgeline" and 0 < ttl <= 60
    finally:
        await redis.aclose()


async def _s3_round_trip(connections: Connections, say) -> bool:
    store = S3BlobStore(connections.s3)
    await store.ensure_bucket(public_read=True)
    png = demo_png("forgeline")
    digest = hashlib.sha256(png).hexdigest()
    url = await store.put(f"demo/{digest}.png", png, content_type="image/png")
    say(f"uploaded {len(png)} bytes → {url}")
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
        response = await http.get(url)
    same = response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == digest
    say(f"anonymous GET {url} → HTTP {response.status_code}, "
        f"{response.headers.get('content-type')}, same bytes: {same}")
    return same


async def run_smoke(connections: Connections, console: Console) -> bool:
    results: dict[str, bool] = {}
    for name, step in (("Kafka", _kafka_round_trip), ("Redis", _redis_round_trip), ("S3", _s3_round_trip)):
        console.rule(f"[bold]{name}")
        try:
            results[name] = await step(connections, lambda message: console.print(f"  {message}"))
        except Exception as exc:  # noqa: BLE001 — the demo reports every failure and goes on
            console.print(f"  [red]{name} failed:[/] {exc!r}")
            console.print("  [yellow]next:[/] is the stack up? `forgeline dev status`; start it with `forgeline dev up`")
            results[name] = False
    console.rule()
    for name, ok in results.items():
        console.print(f"{name:6} {'[green]ok[/]' if ok else '[red]FAILED[/]'}")
    return all(results.values())
