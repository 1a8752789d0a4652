"""A generator process for one path: consume routed jobs, call the provider, emit image bytes.

    forgeline run generator --path primary
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AsyncExitStack

import httpx
from aiokafka import ConsumerRecord

from services.common.budget import RedisBudgetLedger, usd
from services.common.consumer import ConsumerLoop, LoopSettings, Outcome
from services.common.contracts import GenerationRouted, decode
from services.common.jobs import RedisJobStore, RedisTerminalGuard
from services.common.redis import KeySpace
from services.common.settings import BudgetSettings, Connections
from services.common.topics import GroupIds, Topics
from services.common.worker import (
    redis_client,
    run_until_stopped,
    started_consumer,
    started_producer,
)
from services.generator.handlers import GenerateHandler
from services.generator.settings import GeneratorSettings
from services.providers.catalog import build_candidates, load_providers_file
from services.providers.failover import Failover


async def serve(settings: GeneratorSettings, connections: Connections, stop: asyncio.Event,
                budget: BudgetSettings | None = None, environ: Mapping[str, str] | None = None) -> None:
    """``environ``: where the providers file's ``keys_env`` variables are read (``main()`` passes os.environ)."""
    catalog = load_providers_file(settings.providers_file)  # a bad file fails before anything connects
    topics, groups = Topics.from_settings(connections.topics), GroupIds.from_settings(connections.topics)
    keys = KeySpace(connections.redis.key_prefix)
    group_id = groups.generator(settings.path)
    async with AsyncExitStack() as stack:
        producer = await started_producer(stack, connections.kafka)
        consumer = await started_consumer(stack, connections.kafka, group_id=group_id)
        redis = redis_client(stack, connections.redis)
        http = await stack.enter_async_context(httpx.AsyncClient())  # one pool for every adapter
        budget = budget or BudgetSettings()
        failover = Failover(
            build_candidates(catalog.path(settings.path), http=http, redis=redis, keys=keys, environ=environ or {},
                             simulated_latency_s=settings.simulated_latency_s),
            budget=RedisBudgetLedger(redis, keys, cap_micros=usd(budget.cap_usd),
                                reservation_ttl_s=budget.reservation_ttl_s),
            attempts=settings.attempts,
        )
        handler = GenerateHandler(failover=failover, topics=topics, jobs=RedisJobStore(redis, keys),
                                  guard=RedisTerminalGuard(redis, keys))

        async def handle(record: ConsumerRecord) -> Outcome:
            return await handler.handle(decode(GenerationRouted, record.value))

        loop = ConsumerLoop(consumer, producer, handle, LoopSettings(
            group_id=group_id, topics=[topics.name(f"generation.{settings.path}")],
            concurrency=settings.concurrency, commit_interval_s=settings.commit_interval_s,
            shutdown_timeout_s=settings.shutdown_timeout_s))
        await run_until_stopped(loop, stop)
