"""The router process: consume requests, pick a path, forward, record the decision.

    forgeline run router
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Literal

from aiokafka import ConsumerRecord
from prometheus_client import Counter
from redis.asyncio import Redis

from services.common.budget import BudgetGate, BudgetLedger, usd
from services.common.cache import LruTtlCache, ResultCache
from services.common.consumer import ConsumerLoop, LoopSettings, Outcome, Output
from services.common.contracts import (
    GenerationCompleted,
    GenerationRequested,
    GenerationRouted,
    RouteDecision,
    decode,
)
from services.common.jobs import JobStore, TerminalGuard, terminal_outcome
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
from services.router.depth import DepthMonitor
from services.router.handlers import (
    HysteresisPolicy,
    PaidCapacity,
    route,
)
from services.router.settings import RouterSettings

ROUTED = Counter("forgeline_routes_total", "Route decisions by path (or cache, for a request answered at once).",
                 ["path"])
DECISIONS = Counter(
    "forgeline_route_decisions_total",
    "Route decisions by path and what decided them: cache (answered at once), placeholder (paid path "
    "refused, free placeholder on fallback), budget (paid path refused, kept on primary), deadline "
    "(estimated wait against the request's deadline), priority (the high-priority depth band), depth "
    "(the standard depth band).",
    ["path", "reason"])

ReasonCategory = Literal["cache", "placeholder", "budget", "deadline", "priority", "depth"]


class _RefusalSeen:
    """``PaidCapacity`` around the real one for one decision, remembering whether it refused."""

    def __init__(self, paid: PaidCapacity) -> None:
        self._paid = paid
        self.refused = False

    async def allows(self, request: GenerationRequested) -> tuple[bool, str]:
        allowed, why = await self._paid.allows(request)
        self.refused = self.refused or not allowed
        return allowed, why


def decision_category(decision: RouteDecision, *, paid_refused: bool) -> ReasonCategory:
    """What decided the path, from the decision's fields (not its reason text)."""
    if decision.placeholder:
        return "placeholder"
    if paid_refused and decision.path == "primary":
        return "budget"
    if decision.deadline_s is not None and decision.estimated_wait_s is not None:
        return "deadline"
    if decision.priority == "high":
        return "priority"
    return "depth"


@dataclass
class RouterHandler:
    topics: Topics
    depth: DepthMonitor
    policy: HysteresisPolicy
    paid: PaidCapacity
    jobs: JobStore
    redis: Redis
    keys: KeySpace
    cache: ResultCache
    guard: TerminalGuard

    async def __call__(self, record: ConsumerRecord) -> Outcome:
        request = decode(GenerationRequested, record.value)
        # Requests produced straight to Kafka never met ingest's cache check; no provider call
        # (and no paid call) for an image we already have. A comparison job must run, though.
        if request.reference_image is None and (cached := await self.cache.get(request.spec.cache_key())):
            ROUTED.labels("cache").inc()
            DECISIONS.labels("cache", "cache").inc()
            return await terminal_outcome(GenerationCompleted.from_cache(cached, request),
                                          topic=self.topics.name("generation.completed"), guard=self.guard,
                                          jobs=self.jobs)
        paid = _RefusalSeen(self.paid)
        decision = await route(request, self.depth.depth, self.policy, paid, rate=self.depth.rate)
        category = decision_category(decision, paid_refused=paid.refused)
        routed = GenerationRouted.from_request(request, decision)
        if decision.path == "primary":
            self.depth.routed_to_primary()

        # Recorded before the job is forwarded, so the next stage's status can never be overtaken by it.
        await self.jobs.update(
            request.job_id, "routed", tenant=request.tenant, route=decision.path, route_reason=decision.reason,
            primary_depth=decision.primary_depth, timings=routed.timings.model_dump(mode="json"),
            # Not among JobStore's JSON fields: recorded as strings ("inf" when nothing is served).
            estimated_wait_s=_text(decision.estimated_wait_s), service_rate=_text(decision.service_rate),
        )

        async def acked() -> None:
            ROUTED.labels(decision.path).inc()
            DECISIONS.labels(decision.path, category).inc()
            await self.redis.hincrby(self.keys.key("stats", "routes"), decision.path, 1)

        return Outcome([Output(self.topics.name(f"generation.{decision.path}"), routed)], on_acked=acked)


def _text(value: float | None) -> str | None:
    return None if value is None else f"{value:.6g}"


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
        await depth.refresh()  # route nothing on a made-up depth
        if paid is None:
            budget = budget or BudgetSettings()
            paid = BudgetGate(BudgetLedger(redis, keys, cap_micros=usd(budget.cap_usd),
                                           reservation_ttl_s=budget.reservation_ttl_s),
                              cheapest_cost_micros=usd(settings.paid_cost_usd))
        handler = RouterHandler(
            topics=topics, depth=depth, policy=HysteresisPolicy(high=settings.depth_high, low=settings.depth_low),
            paid=paid, jobs=JobStore(redis, keys), redis=redis, keys=keys,
            cache=ResultCache(redis, keys, ttl_s=settings.cache_ttl_s, local=LruTtlCache(0, 0)),
            guard=TerminalGuard(redis, keys),
        )
        loop = ConsumerLoop(consumer, producer, handler, LoopSettings(
            group_id=groups.router, topics=[topics.name("generation.requested")], concurrency=settings.concurrency))
        await run_until_stopped(loop, stop, depth.run())
