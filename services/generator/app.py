"""A generator process for one path: consume routed jobs, call the provider, emit image bytes.

    forgeline run generator --path primary
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from aiokafka import ConsumerRecord

from services.common.consumer import ConsumerLoop, LoopSettings, Outcome
from services.common.contracts import GenerationRouted, decode
from services.common.jobs import JobStore, TerminalGuard
from services.common.redis import KeySpace
from services.common.settings import Connections
from services.common.topics import GroupIds, Topics
from services.common.worker import (
    redis_client,
    run_until_stopped,
    started_consumer,
    started_producer,
)
from services.generator.handlers import GenerateHandler
from services.generator.procedural import ProceduralProvider
from services.generator.provider import ImageProvider
from services.generator.settings import GeneratorSettings


def build_provider(settings: GeneratorSettings) -> ImageProvider:
    """The provider behind this path. Real HTTP providers plug in here (next issue)."""
    return ProceduralProvider(simulated_latency_s=settings.simulated_latency_s)


async def serve(settings: GeneratorSettings, connections: Connections, stop: asyncio.Event,
                provider: ImageProvider | None = None) -> None:
    topics, groups = Topics.from_settings(connections.topics), GroupIds.from_settings(connections.topics)
    keys = KeySpace(connections.redis.key_prefix)
    group_id = groups.generator(settings.path)
    async with AsyncExitStack() as stack:
        producer = await started_producer(stack, connections.kafka)
        consumer = await started_consumer(stack, connections.kafka, group_id=group_id)
        redis = redis_client(stack, connections.redis)
        handler = GenerateHandler(
            provider=provider or build_provider(settings), topics=topics, jobs=JobStore(redis, keys),
            guard=TerminalGuard(redis, keys), attempts=settings.attempts, timeout_s=settings.provider_timeout_s,
        )

        async def handle(record: ConsumerRecord) -> Outcome:
            return await handler.handle(decode(GenerationRouted, record.value))

        loop = ConsumerLoop(consumer, producer, handle, LoopSettings(
            group_id=group_id, topics=[topics.name(f"generation.{settings.path}")],
            concurrency=settings.concurrency, commit_interval_s=settings.commit_interval_s,
            shutdown_timeout_s=settings.shutdown_timeout_s))
        await run_until_stopped(loop, stop)
