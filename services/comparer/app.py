"""The comparer process: consume comparison requests, score them, publish the results.

    forgeline run comparer
"""

from __future__ import annotations

import asyncio

from services.common.bootstrap import Infra
from services.common.breaker import RedisCircuitBreaker
from services.common.budget import usd
from services.common.consumer import LoopSettings
from services.common.contracts import ComparisonRequested
from services.common.fetch import SafeFetcher
from services.common.keypool import RedisKeyPool
from services.common.recent_jobs import RedisRecentJobs
from services.common.worker import consume
from services.comparer.handlers import CompareHandler
from services.comparer.perceptual import PerceptualComparer
from services.comparer.resolve import ImageResolver
from services.comparer.service import ComparisonCache, ComparisonService
from services.comparer.settings import ComparerSettings
from services.providers.failover import Candidate, Failover
from services.providers.vlm import VlmComparer, VlmConfig


async def vlm_failover(settings: ComparerSettings, infra: Infra) -> Failover | None:
    """The VLM behind the generator's failover rules; None when it has no keys (perceptual only)."""
    api_keys = settings.api_keys()
    if not api_keys:
        return None
    adapter = VlmComparer(VlmConfig(base_url=str(settings.vlm_base_url), model=settings.vlm_model,
                                    timeout_s=settings.vlm_timeout_s), await infra.http())
    candidate = Candidate(
        name=settings.vlm_name, adapter=adapter, breaker=RedisCircuitBreaker(infra.redis, infra.keys, settings.vlm_name),
        keys=RedisKeyPool(infra.redis, infra.keys, settings.vlm_name, api_keys), cost_micros=usd(settings.vlm_cost_usd),
        timeout_s=settings.vlm_timeout_s + 5,  # the adapter's own deadline fires first
    )
    return Failover([candidate], budget=infra.budget, attempts=settings.vlm_attempts)


async def build(settings: ComparerSettings, infra: Infra) -> CompareHandler:
    fetcher = await infra.enter(SafeFetcher(allow_loopback=settings.allow_loopback_urls,
                                            timeout_s=settings.fetch_timeout_s))
    jobs = infra.jobs()
    service = ComparisonService(
        cache=ComparisonCache(infra.redis, infra.keys, ttl_s=settings.cache_ttl_s, scope=infra.cache_scope),
        perceptual=PerceptualComparer(),
        vlm=await vlm_failover(settings, infra),
    )
    return CompareHandler(resolver=ImageResolver(fetcher=fetcher, blobs=infra.blobs, jobs=jobs),
                          service=service, topics=infra.topics, jobs=jobs, guard=infra.terminal_guard(),
                          recent=RedisRecentJobs(infra.redis, infra.keys))


async def serve(settings: ComparerSettings, infra: Infra, stop: asyncio.Event) -> None:
    handler = await build(settings, infra)
    await consume(infra, stop, LoopSettings(
        group_id=infra.groups.comparer, topics=[infra.topics.name("comparison.requested")],
        concurrency=settings.concurrency, shutdown_timeout_s=settings.shutdown_timeout_s), ComparisonRequested, handler.handle)
