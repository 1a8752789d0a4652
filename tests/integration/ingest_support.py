"""The ingest app in process for integration tests: over httpx's ASGI transport, on real Kafka and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from aiokafka import ConsumerRecord, TopicPartition

from services.common.bootstrap import bootstrap
from services.common.kafka import make_consumer
from services.common.settings import CacheSettings, Connections
from services.ingest.app import build_deps, create_app, serve
from services.ingest.deps import IngestDeps
from services.ingest.settings import IngestSettings


@dataclass
class Api:
    http: httpx.AsyncClient
    deps: IngestDeps


@asynccontextmanager
async def api(connections: Connections, settings: IngestSettings | None = None, *,
              cache: CacheSettings | None = None) -> AsyncIterator[Api]:
    """The app in process, over httpx's ASGI transport (no sockets); ``cache``: the result cache's scope."""
    async with bootstrap(connections, cache=cache) as infra:
        deps = await build_deps(settings or IngestSettings(), infra)
        transport = httpx.ASGITransport(app=create_app(deps))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
            yield Api(http, deps)


async def requested_count(deps: IngestDeps) -> int:
    """Messages on this test's generation.requested topic (a fresh topic per test)."""
    topic = deps.topics.name("generation.requested")
    [described] = await deps.admin.describe_topics([topic])
    partitions = [p["partition"] for p in described["partitions"]]
    assert partitions, f"{topic} has no partitions"
    ends = await deps.offsets.end_offsets([TopicPartition(topic, p) for p in partitions])
    return sum(ends.values())


async def consume(connections: Connections, topic: str, count: int, timeout_s: float = 20) -> list[ConsumerRecord]:
    consumer = make_consumer(connections.kafka, topic, group_id=None)
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(records) < count and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def locs(response: httpx.Response) -> list[list[str | int]]:
    return [error["loc"] for error in response.json()["detail"]]


@asynccontextmanager
async def served(connections: Connections, settings: IngestSettings) -> AsyncIterator[str]:
    """The API on a real socket (uvicorn via ``serve``): httpx's ASGI transport buffers whole responses."""
    stop = asyncio.Event()

    async def run() -> None:
        async with bootstrap(connections) as infra:
            await serve(settings, infra, stop)

    task = asyncio.create_task(run())
    base = f"http://127.0.0.1:{settings.port}"
    try:
        async with httpx.AsyncClient(timeout=2) as probe:
            for _ in range(600):
                if task.done():
                    await task  # raises the startup error
                try:
                    # /readyz, not /healthz: ingest listens at once and says "starting" until connected.
                    if (await probe.get(f"{base}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        yield base
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
