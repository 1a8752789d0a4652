"""The router process: consume requests, pick a path, forward, record the decision.

    forgeline run router
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from aiokafka import ConsumerRecord

from services.common.backoff import until_ready
from services.common.bootstrap import Infra
from services.common.budget import usd
from services.common.cache import LruTtlCache, RedisResultCache
from services.common.coalescing import RedisCoalescer
from services.common.consumer import LoopSettings, Outcome
from services.common.contracts import (
    GenerationCancelRequested,
    GenerationCompleted,
    GenerationFailed,
    GenerationRequested,
    decode,
)
from services.common.queue_position import RedisQueueBook
from services.common.ratelimit import RateLimiter
from services.common.route_stats import RedisRouteStats
from services.common.tenants import TenantStore
from services.common.worker import consume, run_until_stopped
from services.router.budget_gate import BudgetGate
from services.router.cancel import CancelHandler
from services.router.coalesce import FanOut, LeaseSweeper
from services.router.depth import DepthMonitor, report_queues
from services.router.handlers import RouterHandler
from services.router.limits import KafkaNativeLimits
from services.router.policy import PaidCapacity, policy_from_settings
from services.router.settings import RouterSettings

log = logging.getLogger(__name__)


async def build(settings: RouterSettings, infra: Infra, *, paid: PaidCapacity | None = None) -> RouterHandler:
    """``paid``: the paid path's gate; default a ``BudgetGate`` on the shared monthly ledger."""
    depth = DepthMonitor.for_group(
        await infra.admin(), await infra.offsets(), topic=infra.topics.name("generation.primary"),
        group_id=infra.groups.generator("primary"), refresh_s=settings.depth_refresh_s,
        rate_window_s=settings.rate_window_s)
    # Route nothing on a made-up depth; a fresh broker may still be electing the group coordinator.
    await until_ready(depth.refresh, what="primary queue depth", logger=log)
    return RouterHandler(
        topics=infra.topics, depth=depth, policy=policy_from_settings(settings),
        paid=paid or BudgetGate(infra.budget, cheapest_cost_micros=usd(settings.paid_cost_usd)),
        jobs=infra.jobs(), routes=RedisRouteStats(infra.redis, infra.keys),
        cache=RedisResultCache(infra.redis, infra.keys, ttl_s=settings.cache_ttl_s, local=LruTtlCache(0, 0)),
        guard=infra.terminal_guard(), cache_scope=infra.cache_scope,
        limits=KafkaNativeLimits(TenantStore(infra.redis, infra.keys), RateLimiter(infra.redis, infra.keys),
                                 infra.jobs()),
        coalescer=RedisCoalescer(infra.redis, infra.keys, lease_s=settings.coalesce_lease_s,
                                 scope=infra.cache_scope) if settings.coalesce else None,
        queue=RedisQueueBook(infra.redis, infra.keys),
    )


async def serve(settings: RouterSettings, infra: Infra, stop: asyncio.Event) -> None:
    handler = await build(settings, infra)
    canceler = CancelHandler(topics=infra.topics, jobs=infra.jobs(), guard=infra.terminal_guard())
    # Cancellations have a loop (and group) of their own: a burst of requests never holds one back.
    cancels = consume(infra, stop, LoopSettings(
        group_id=infra.groups.router + ".cancel", topics=[infra.topics.name("generation.cancel")],
        concurrency=settings.concurrency), GenerationCancelRequested, canceler.handle)
    fallback = DepthMonitor.for_group(
        await infra.admin(), await infra.offsets(), topic=infra.topics.name("generation.fallback"),
        group_id=infra.groups.generator("fallback"), refresh_s=settings.depth_refresh_s,
        rate_window_s=settings.rate_window_s)
    companions: list[Awaitable[None]] = [handler.depth.run(), fallback.run(), cancels]
    if handler.queue is not None:
        companions.append(report_queues(handler.queue, {"primary": handler.depth, "fallback": fallback},
                                        every_s=settings.depth_refresh_s))
    if handler.coalescer is not None:
        companions += await _coalescing(settings, infra, stop, handler, handler.coalescer)
    await consume(infra, stop, LoopSettings(
        group_id=infra.groups.router, topics=[infra.topics.name("generation.requested")],
        concurrency=settings.concurrency), GenerationRequested, handler.handle, *companions)


async def _coalescing(settings: RouterSettings, infra: Infra, stop: asyncio.Event, handler: RouterHandler,
                      coalescer: RedisCoalescer) -> list[Awaitable[None]]:
    """The fan-out over the terminal topics (its own group) and the lease sweeper."""
    fan_out = FanOut(coalescer=coalescer, router=handler, topics=infra.topics, jobs=handler.jobs,
                     guard=handler.guard)
    terminal = {infra.topics.name("generation.completed"): GenerationCompleted,
                infra.topics.name("generation.failed"): GenerationFailed}

    async def on_record(record: ConsumerRecord) -> Outcome:
        return await fan_out.handle(decode(terminal[record.topic], record.value))

    loop = await infra.consumer_loop(on_record, LoopSettings(
        group_id=infra.groups.router + ".coalesce", topics=list(terminal), concurrency=settings.concurrency))
    sweeper = LeaseSweeper(coalescer=coalescer, jobs=handler.jobs, producer=await infra.producer(),
                           topics=infra.topics, every_s=settings.coalesce_sweep_s)
    return [run_until_stopped(loop, stop), sweeper.run()]
