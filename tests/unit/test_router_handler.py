"""The router's handler on the port fakes: answer from the cache, or route, record and forward."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import REGISTRY

from services.common import contracts as c
from services.common.budget import usd
from services.common.cache import CacheScope
from services.common.topics import Topics
from services.router.budget_gate import BudgetGate
from services.router.handlers import RouterHandler
from services.router.policy import HysteresisPolicy
from tests.fakes import MemoryBudgetLedger, MemoryJobStore, MemoryResultCache, MemoryRouteStats, MemoryTerminalGuard

TOPICS = Topics("t")


@dataclass
class _Depth:
    """The primary queue as the router would measure it."""

    depth: int = 0
    rate: float = 1.0
    sent: int = 0

    def routed_to_primary(self) -> None:
        self.sent += 1


def _handler(*, depth: _Depth | None = None, budget_usd: str = "10") -> RouterHandler:
    return RouterHandler(
        topics=TOPICS, depth=depth or _Depth(), policy=HysteresisPolicy(high=10, low=5),
        paid=BudgetGate(MemoryBudgetLedger(cap_micros=usd(budget_usd)), cheapest_cost_micros=usd("0.0023")),
        jobs=MemoryJobStore(), routes=MemoryRouteStats(), cache=MemoryResultCache(), guard=MemoryTerminalGuard())


def _request(**fields) -> c.GenerationRequested:
    return c.GenerationRequested(job_id=c.new_job_id(), tenant="studio", spec=c.ImageSpec(prompt="ice sword"),
                                 **fields)


def _decisions(path: str, reason: str) -> float:
    return REGISTRY.get_sample_value("forgeline_route_decisions_total", {"path": path, "reason": reason}) or 0.0


async def _cached(handler: RouterHandler, prompt: str = "ice sword") -> c.GenerationCompleted:
    earlier = c.GenerationCompleted(
        job_id=c.new_job_id(), tenant="studio", url="https://cdn.test/ab/abc.png", object_key="ab/abc.png",
        sha256="a" * 64, content_type="image/png", size_bytes=123, spec=c.ImageSpec(prompt=prompt), path="primary",
        provider="hf-space-a", deterministic=False)
    # Made earlier by the same tenant (by default a tenant is answered only from its own results).
    await handler.cache.put(handler.cache_scope.key(earlier.spec, "studio"), earlier)
    return earlier


@pytest.mark.parametrize("shared", [False, True])
async def test_a_kafka_native_request_is_answered_from_another_tenants_result_only_when_shared(shared):
    handler = _handler()
    handler.cache_scope = CacheScope(shared=shared)
    earlier = await _cached(handler)  # under studio's own key
    made_by_other = earlier.model_copy(update={"tenant": "other", "url": "https://cdn.test/cd/other.png"})
    await handler.cache.put(handler.cache_scope.key(earlier.spec, "other"), made_by_other)
    request = c.GenerationRequested(job_id=c.new_job_id(), tenant="third", spec=c.ImageSpec(prompt="ice sword"))

    [output] = (await handler.handle(request)).outputs

    if shared:
        assert output.topic == "t.generation.completed" and output.event.url == made_by_other.url
    else:
        assert output.topic == "t.generation.primary"  # generated for its own tenant


async def test_a_cache_hit_is_answered_at_once_with_one_terminal_event():
    handler = _handler()
    earlier = await _cached(handler)
    request = _request(metadata={"slot": "3"})

    outcome = await handler.handle(request)

    [output] = outcome.outputs
    assert output.topic == "t.generation.completed"
    done = output.event
    assert isinstance(done, c.GenerationCompleted)
    assert (done.job_id, done.tenant, done.url, done.sha256, done.cached, done.path, done.metadata) == (
        request.job_id, "studio", earlier.url, earlier.sha256, True, None, {"slot": "3"})
    assert await handler.jobs.get(request.job_id) is None  # nothing recorded before the broker has it

    await outcome.on_acked()
    view = await handler.jobs.get(request.job_id)
    assert (view.status, view.url, view.cached) == ("completed", earlier.url, True)
    assert await handler.routes.counts() == {}  # a cache answer is no route
    assert handler.depth.sent == 0
    # A replayed request finds the job answered: nothing more is published.
    assert list((await handler.handle(request)).outputs) == []


async def test_a_request_with_a_reference_image_is_routed_even_when_cached():
    handler = _handler()
    await _cached(handler)
    request = _request(reference_image="https://example.test/target.png")

    [output] = (await handler.handle(request)).outputs

    assert output.topic == "t.generation.primary"
    assert isinstance(output.event, c.GenerationRouted)


async def test_a_shallow_queue_routes_to_primary_and_records_the_decision():
    depth = _Depth(depth=3, rate=2.0)
    handler = _handler(depth=depth)
    request = _request()

    outcome = await handler.handle(request)

    [output] = outcome.outputs
    assert output.topic == "t.generation.primary"
    routed = output.event
    assert isinstance(routed, c.GenerationRouted)
    assert (routed.job_id, routed.spec, routed.decision.path, routed.decision.primary_depth) == (
        request.job_id, request.spec, "primary", 3)
    assert routed.timings.routed_at == routed.decision.decided_at
    assert depth.sent == 1
    # The status is written before the record is forwarded, so the next stage cannot be overtaken by it.
    view = await handler.jobs.get(request.job_id)
    assert (view.status, view.route, view.route_reason, view.primary_depth, view.tenant) == (
        "routed", "primary", routed.decision.reason, 3, "studio")
    assert await handler.routes.counts() == {}

    await outcome.on_acked()
    assert await handler.routes.counts() == {"primary": 1}


async def test_a_deep_queue_routes_to_the_paid_fallback_when_the_budget_allows():
    depth = _Depth(depth=10)
    handler = _handler(depth=depth)
    request = _request()
    before = _decisions("fallback", "depth")

    outcome = await handler.handle(request)
    await outcome.on_acked()

    [output] = outcome.outputs
    assert output.topic == "t.generation.fallback"
    assert (output.event.decision.path, output.event.decision.placeholder) == ("fallback", False)
    assert "reached 10" in output.event.decision.reason
    assert depth.sent == 0
    assert (await handler.jobs.get(request.job_id)).route == "fallback"
    assert await handler.routes.counts() == {"fallback": 1}
    assert _decisions("fallback", "depth") == before + 1


async def test_a_budget_refusal_keeps_the_job_on_primary():
    depth = _Depth(depth=25)
    handler = _handler(depth=depth, budget_usd="0.001")  # less than one paid image
    request = _request()
    before = _decisions("primary", "budget")

    outcome = await handler.handle(request)
    await outcome.on_acked()

    [output] = outcome.outputs
    assert output.topic == "t.generation.primary"
    decision = output.event.decision
    assert (decision.path, decision.placeholder) == ("primary", False)
    assert decision.reason.endswith("but monthly budget $0.00 of $0.001 spent")
    assert depth.sent == 1
    assert (await handler.jobs.get(request.job_id)).route_reason == decision.reason
    assert await handler.routes.counts() == {"primary": 1}
    assert _decisions("primary", "budget") == before + 1


async def test_a_refused_job_that_would_miss_its_deadline_gets_a_free_placeholder_on_fallback():
    handler = _handler(depth=_Depth(depth=100, rate=0.5), budget_usd="0")
    request = _request(deadline_s=30, allow_placeholder=True)

    [output] = (await handler.handle(request)).outputs

    assert output.topic == "t.generation.fallback"
    decision = output.event.decision
    assert (decision.path, decision.placeholder, decision.estimated_wait_s) == ("fallback", True, 200.0)
    assert (await handler.jobs.get(request.job_id)).route == "fallback"


async def test_a_copy_of_a_request_already_routed_is_dropped():
    """ingest re-sent a job for a client's retry (or a producer retried): it is routed once."""
    handler = _handler(depth=_Depth(depth=1, rate=2.0))
    request = _request()

    first = await handler.handle(request)
    await first.on_acked()
    copy = await handler.handle(request)

    assert len(first.outputs) == 1
    assert copy.outputs == () and copy.on_acked is None
