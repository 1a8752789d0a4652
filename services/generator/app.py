"""A generator process for one path: consume routed jobs, call the provider, emit image bytes.

    forgeline run generator --path primary
"""

from __future__ import annotations

import asyncio

from services.common.bootstrap import Infra
from services.common.coalescing import RedisCoalescer
from services.common.consumer import LoopSettings
from services.common.contracts import GenerationRouted
from services.common.provider_calls import RedisProviderCalls
from services.common.queue_position import RedisQueueBook
from services.common.worker import consume
from services.generator.handlers import GenerateHandler
from services.generator.settings import GeneratorSettings
from services.providers.catalog import build_candidates, load_providers_file
from services.providers.failover import Failover


async def build(settings: GeneratorSettings, infra: Infra) -> GenerateHandler:
    catalog = load_providers_file(settings.providers_file)  # a bad file fails before anything connects
    candidates = build_candidates(catalog.path(settings.path), http=await infra.http(), redis=infra.redis,
                                  keys=infra.keys, environ=infra.environ,
                                  simulated_latency_s=settings.simulated_latency_s)
    guard = infra.terminal_guard()
    failover = Failover(candidates, budget=infra.budget, attempts=settings.attempts, key_wait_s=settings.key_wait_s,
                        calls=RedisProviderCalls(infra.redis, infra.keys), guard=guard)
    return GenerateHandler(failover=failover, topics=infra.topics, jobs=infra.jobs(), guard=guard,
                           coalescer=RedisCoalescer(infra.redis, infra.keys, lease_s=settings.coalesce_lease_s,
                                                    scope=infra.cache_scope),
                           queue=RedisQueueBook(infra.redis, infra.keys))


async def serve(settings: GeneratorSettings, infra: Infra, stop: asyncio.Event) -> None:
    handler = await build(settings, infra)
    await consume(infra, stop, LoopSettings(
        group_id=infra.groups.generator(settings.path), topics=[infra.topics.name(f"generation.{settings.path}")],
        concurrency=settings.concurrency, commit_interval_s=settings.commit_interval_s,
        shutdown_timeout_s=settings.shutdown_timeout_s), GenerationRouted, handler.handle)
