"""The router process: consume requests, pick a path, forward, record the decision.

    forgeline run router
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from services.common.backoff import until_ready
from services.common.budget import RedisBudgetLedger, usd
from services.common.cache import LruTtlCache, RedisResultCache
from services.common.consumer import ConsumerLoop, LoopSettings
from services.common.jobs import RedisJobStore, RedisTerminalGuard
from services.common.redis import KeySpace
from services.common.settings import BudgetSettings, Connections
from services.common.topics import GroupIds, Topics
from services.common.worker import (
    redis_client,
    run_until_stopped,
    started_admin,
    started_consumer,
    started_producer,
)
from services.router.budget_gate import BudgetGate
from services.router.depth import DepthMonitor
from services.router.handlers import RouterHandler
from services.router.policy import HysteresisPolicy, PaidCapacity
from services.router.settings import RouterSettings

log = logging.getLogger(__name__)


async def serve(settings: RouterSettings, connections: Connections, stop: asyncio.Event,
                paid: PaidCapacity | None = None, budget: BudgetSettings | None = None) -> None:
    """``paid``: the paid path's gate; default a ``BudgetGate`` on the shared monthly ledger
    (``budget``, read from ``FORGELINE_BUDGET_*`` when not given)."""
    topics, groups = Topics.from_settings(connections.topics), GroupIds.from_settings(connections.topics)
    keys = KeySpace(connections.redis.key_prefix)
    async with AsyncExitStack() as stack:
        producer = await started_producer(stack, connections.kafka)
        consumer = await started_consumer(stack, connections.kafka, group_id=groups.router)
        offsets = await started_consumer(stack, connections.kafka, group_id=None)
        admin = await started_admin(stack, connections.kafka)
        redis = redis_client(stack, connections.redis)

        depth = DepthMonitor(admin, offsets, topic=topics.name("generation.primary"),
                             group_id=groups.generator("primary"), refresh_s=settings.depth_refresh_s,
                             rate_window_s=settings.rate_window_s)
        # Route nothing on a made-up depth; a fresh broker may still be electing the group coordinator.
        await until_ready(depth.refresh, what="primary queue depth", logger=log)
        if paid is None:
            budget = budget or BudgetSettings()
            paid = BudgetGate(RedisBudgetLedger(redis, keys, cap_micros=usd(budget.cap_usd),
                                           reservation_ttl_s=budget.reservation_ttl_s),
                              cheapest_cost_micros=usd(settings.paid_cost_usd))
        handler = RouterHandler(
            topics=topics, depth=depth, policy=HysteresisPolicy(high=settings.depth_high, low=settings.depth_low),
            paid=paid, jobs=RedisJobStore(redis, keys), redis=redis, keys=keys,
            cache=RedisResultCache(redis, keys, ttl_s=settings.cache_ttl_s, local=LruTtlCache(0, 0)),
            guard=RedisTerminalGuard(redis, keys),
        )
        loop = ConsumerLoop(consumer, producer, handler, LoopSettings(
            group_id=groups.router, topics=[topics.name("generation.requested")], concurrency=settings.concurrency))
        await run_until_stopped(loop, stop, depth.run())
