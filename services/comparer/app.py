"""The comparer process: consume comparison requests, score them, publish the results.

    forgeline run comparer
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import httpx
from aiokafka import ConsumerRecord

from services.common.blobstore import S3BlobStore
from services.common.breaker import RedisCircuitBreaker
from services.common.budget import RedisBudgetLedger, usd
from services.common.consumer import ConsumerLoop, LoopSettings, Outcome
from services.common.contracts import ComparisonRequested, decode
from services.common.fetch import SafeFetcher
from services.common.jobs import RedisJobStore, RedisTerminalGuard
from services.common.keypool import RedisKeyPool
from services.common.redis import KeySpace
from services.common.settings import BudgetSettings, Connections
from services.common.topics import GroupIds, Topics
from services.common.worker import (
    redis_client,
    run_until_stopped,
    started_consumer,
    started_producer,
)
from services.comparer.handlers import CompareHandler
from services.comparer.perceptual import PerceptualComparer
from services.comparer.resolve import ImageResolver
from services.comparer.service import ComparisonCache, ComparisonService
from services.comparer.settings import ComparerSettings
from services.providers.failover import Candidate, Failover
from services.providers.vlm import VlmComparer, VlmConfig


def vlm_failover(settings: ComparerSettings, *, http: httpx.AsyncClient, redis, keys: KeySpace,
                 budget: BudgetSettings) -> Failover | None:
    """The VLM behind the generator's failover rules; None when it has no keys (perceptual only)."""
    api_keys = settings.api_keys()
    if not api_keys:
        return None
    adapter = VlmComparer(VlmConfig(base_url=str(settings.vlm_base_url), model=settings.vlm_model,
                                    timeout_s=settings.vlm_timeout_s), http)
    candidate = Candidate(
        name=settings.vlm_name, adapter=adapter, breaker=RedisCircuitBreaker(redis, keys, settings.vlm_name),
        keys=RedisKeyPool(redis, keys, settings.vlm_name, api_keys), cost_micros=usd(settings.vlm_cost_usd),
        timeout_s=settings.vlm_timeout_s + 5,  # the adapter's own deadline fires first
    )
    ledger = RedisBudgetLedger(redis, keys, cap_micros=usd(budget.cap_usd), reservation_ttl_s=budget.reservation_ttl_s)
    return Failover([candidate], budget=ledger, attempts=settings.vlm_attempts)


async def serve(settings: ComparerSettings, connections: Connections, stop: asyncio.Event,
                budget: BudgetSettings | None = None) -> None:
    topics, groups = Topics.from_settings(connections.topics), GroupIds.from_settings(connections.topics)
    keys = KeySpace(connections.redis.key_prefix)
    async with AsyncExitStack() as stack:
        producer = await started_producer(stack, connections.kafka)
        consumer = await started_consumer(stack, connections.kafka, group_id=groups.comparer)
        redis = redis_client(stack, connections.redis)
        http = await stack.enter_async_context(httpx.AsyncClient())  # the VLM's pool
        fetcher = await stack.enter_async_context(
            SafeFetcher(allow_loopback=settings.allow_loopback_urls, timeout_s=settings.fetch_timeout_s))
        jobs = RedisJobStore(redis, keys)
        service = ComparisonService(
            cache=ComparisonCache(redis, keys, ttl_s=settings.cache_ttl_s), perceptual=PerceptualComparer(),
            vlm=vlm_failover(settings, http=http, redis=redis, keys=keys, budget=budget or BudgetSettings()),
        )
        handler = CompareHandler(
            resolver=ImageResolver(fetcher=fetcher, blobs=S3BlobStore(connections.s3), jobs=jobs),
            service=service, topics=topics, jobs=jobs, guard=RedisTerminalGuard(redis, keys))

        async def handle(record: ConsumerRecord) -> Outcome:
            return await handler.handle(decode(ComparisonRequested, record.value))

        loop = ConsumerLoop(consumer, producer, handle, LoopSettings(
            group_id=groups.comparer, topics=[topics.name("comparison.requested")],
            concurrency=settings.concurrency, shutdown_timeout_s=settings.shutdown_timeout_s))
        await run_until_stopped(loop, stop)
