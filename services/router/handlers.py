"""The router's handler: answer from the cache, wait on an identical job in flight, or decide a path
and forward the request.

The decision itself is :func:`services.router.policy.route`; this module records it (job
status, metrics, route counts) and emits the routed request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client import Counter

from services.common.cache import CacheScope
from services.common.coalescing import RedisCoalescer, coalesces
from services.common.consumer import Outcome, Output
from services.common.contracts import (
    GenerationCompleted,
    GenerationRequested,
    GenerationRouted,
    RouteDecision,
)
from services.common.jobs import terminal_outcome
from services.common.ports import JobStore, ResultCache, RouteStats, TerminalGuard
from services.common.queue_position import RedisQueueBook
from services.common.topics import Topics
from services.router.limits import KafkaNativeLimits
from services.router.policy import PaidCapacity, RoutingPolicy, route

ROUTED = Counter("forgeline_routes_total", "Route decisions by path (cache: answered at once; duplicate: a copy of an "
                 "ended job; coalesced: waits on an identical job in flight; rate_limited: produced straight to "
                 "Kafka beyond its tenant's limits).", ["path"])
DECISIONS = Counter(
    "forgeline_route_decisions_total",
    "Route decisions by path and what decided them: cache (answered at once), placeholder (paid path "
    "refused, free placeholder on fallback), budget (paid path refused, kept on primary), deadline "
    "(estimated wait against the request's deadline), priority (the high-priority depth band), depth "
    "(the standard depth band).",
    ["path", "reason"])

ReasonCategory = Literal["cache", "placeholder", "budget", "deadline", "priority", "depth"]


class PrimaryQueue(Protocol):
    """What routing reads of the primary path: ``depth.DepthMonitor`` in production, a stub in unit tests."""

    @property
    def depth(self) -> int: ...

    @property
    def rate(self) -> float: ...

    def routed_to_primary(self) -> None:
        """Count a job sent to primary since the last measurement."""


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
    depth: PrimaryQueue
    policy: RoutingPolicy
    paid: PaidCapacity
    jobs: JobStore
    routes: RouteStats
    cache: ResultCache
    guard: TerminalGuard
    cache_scope: CacheScope = CacheScope()  # whose results answer a request: its tenant's unless shared
    limits: KafkaNativeLimits | None = None  # tenant limits for requests that did not come through ingest
    coalescer: RedisCoalescer | None = None  # None: every request is routed on its own
    queue: RedisQueueBook | None = None  # None: routed jobs get no queue number

    async def handle(self, request: GenerationRequested, *, parked: bool = False) -> Outcome:
        """Answer, park or route ``request``.

        ``parked``: a follower re-driven after its leader failed (``services.router.coalesce``); it
        was never forwarded, though it may have been forwarded once as a leader that lost its lease.
        """
        # A copy of a request already routed, or whose job has ended (ingest re-sent it for a
        # client's retry, a producer's retry, a replay): nothing more to do. Both asked at once; a parked
        # follower re-routed after its leader failed may have been forwarded once (a leader that lost its lease).
        # The result cache is asked in the same wait (a copy costs a wasted read; every new request, a round trip less).
        forwarded, finished, cached = await asyncio.gather(self.jobs.forwarded(request.job_id),
                                                           self.guard.finished(request.job_id), self._cached(request))
        if (forwarded and not parked) or finished:
            ROUTED.labels("duplicate").inc()
            return Outcome()
        # Produced straight to Kafka: held to the tenant's limits here, as ingest holds HTTP callers.
        if self.limits is not None and (refused := await self.limits.refusal(request)) is not None:
            ROUTED.labels("rate_limited").inc()
            return await terminal_outcome(refused, topic=self.topics.name("generation.failed"), guard=self.guard,
                                          jobs=self.jobs)
        # Requests produced straight to Kafka never met ingest's cache check; no provider call
        # (and no paid call) for an image we already have. A comparison job must run, though.
        if cached is not None:
            ROUTED.labels("cache").inc()
            DECISIONS.labels("cache", "cache").inc()
            return await terminal_outcome(GenerationCompleted.from_cache(cached, request),
                                          topic=self.topics.name("generation.completed"), guard=self.guard,
                                          jobs=self.jobs)
        # The same request already in flight: wait for its image instead of paying for another. The path is
        # decided in the same wait (it reads only the depth and the budget; a follower's decision goes unused).
        if self.coalescer is not None and coalesces(request):
            role, decided = await asyncio.gather(self.coalescer.join(request, mark=False), self._decide(request))
            if not role.leads:
                return await self._park(request, role.leader)
            return await self._forward(request, decided, self.coalescer.mark_leader(role.key, request.job_id))
        return await self._forward(request, await self._decide(request))

    async def _cached(self, request: GenerationRequested) -> GenerationCompleted | None:
        """The request's image, if the result cache has it; a comparison job must run, so it is not looked up."""
        if request.reference_image is not None:
            return None
        return await self.cache.get(self.cache_scope.key(request.spec, request.tenant))

    async def _park(self, request: GenerationRequested, leader: str) -> Outcome:
        """The follower waits in Redis, not in a consumer slot: its offset is committed at once."""
        ROUTED.labels("coalesced").inc()
        await self.jobs.update(request.job_id, "routed", tenant=request.tenant, coalesced_with=leader,
                               route_reason=f"coalesced with job {leader}: the same request is in flight")
        return Outcome()

    async def _decide(self, request: GenerationRequested) -> tuple[RouteDecision, ReasonCategory]:
        """The request's path, and what decided it; nothing is recorded yet."""
        paid = _RefusalSeen(self.paid)
        decision = await route(request, self.depth.depth, self.policy, paid, rate=self.depth.rate)
        return decision, decision_category(decision, paid_refused=paid.refused)

    async def _forward(self, request: GenerationRequested, decided: tuple[RouteDecision, ReasonCategory],
                       *also: Awaitable[object]) -> Outcome:
        """Record the decision and forward the request on its path; ``also``: writes that must land first too."""
        decision, category = decided
        routed = GenerationRouted.from_request(request, decision)
        if decision.path == "primary":
            self.depth.routed_to_primary()

        # Recorded before the job is forwarded, so the next stage's status can never be overtaken by it.
        await asyncio.gather(self.jobs.update(
            request.job_id, "routed", tenant=request.tenant, route=decision.path, route_reason=decision.reason,
            primary_depth=decision.primary_depth, timings=routed.timings.model_dump(mode="json"),
            # Not among RedisJobStore's JSON fields: recorded as strings ("inf" when nothing is served).
            estimated_wait_s=_text(decision.estimated_wait_s), service_rate=_text(decision.service_rate),
        ), *also)

        async def numbered() -> None:
            if self.queue is not None:
                number = await self.queue.routed(decision.path, request.job_id)
                await self.jobs.update(request.job_id, "routed", queue_path=decision.path, queue_number=number)

        async def acked() -> None:
            # Independent writes: one round trip's wait for the three (the number's status write follows it).
            await asyncio.gather(self.jobs.mark_forwarded(request.job_id), numbered(), self.routes.count(decision.path))
            ROUTED.labels(decision.path).inc()
            DECISIONS.labels(decision.path, category).inc()

        return Outcome([Output(self.topics.name(f"generation.{decision.path}"), routed)], on_acked=acked)


def _text(value: float | None) -> str | None:
    return None if value is None else f"{value:.6g}"
