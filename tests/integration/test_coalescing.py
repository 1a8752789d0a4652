"""The coalescing groups and queue counters on a real Redis: leader election, parking, closing,
takeover of a lease that was not renewed, and queue positions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from services.common import contracts as c
from services.common.budget import usd
from services.common.cache import CacheScope
from services.common.coalescing import RedisCoalescer, coalescing_key
from services.common.jobs import RedisJobStore
from services.common.queue_position import RedisQueueBook
from services.common.redis import KeySpace
from services.common.topics import Topics
from services.router.budget_gate import BudgetGate
from services.router.coalesce import FanOut
from services.router.handlers import RouterHandler
from services.router.policy import HysteresisPolicy
from tests.fakes import MemoryBudgetLedger, MemoryJobStore, MemoryResultCache, MemoryRouteStats, MemoryTerminalGuard

pytestmark = pytest.mark.integration

TOPICS = Topics("t")


def _request(prompt: str = "healing potion", **spec) -> c.GenerationRequested:
    return c.GenerationRequested(job_id=c.new_job_id(), tenant="studio-a",
                                 spec=c.ImageSpec(prompt=prompt, width=64, height=64, **spec))


@pytest.fixture
def coalescer(redis, connections) -> RedisCoalescer:
    return RedisCoalescer(redis, KeySpace(connections.redis.key_prefix), lease_s=0.3)


async def test_one_leader_among_concurrent_identical_requests(coalescer):
    requests = [_request("  healing   potion ") if i % 2 else _request() for i in range(20)]  # same normalised spec
    roles = await asyncio.gather(*(coalescer.join(r) for r in requests))

    leaders = [r for r, role in zip(requests, roles, strict=True) if role.leads]
    assert len(leaders) == 1
    assert {role.leader for role in roles} == {leaders[0].job_id}
    assert (await coalescer.join(leaders[0])).leads  # the leader's replay still leads
    assert (await coalescer.join(_request("healing potion", seed=3))).leads  # another spec, another group


async def test_tenants_coalesce_only_when_the_cache_is_shared(redis, connections):
    keys = KeySpace(connections.redis.key_prefix)
    a, b = _request(), _request().model_copy(update={"tenant": "studio-b"})

    per_tenant = RedisCoalescer(redis, keys)  # the default scope: a tenant never waits on another's job
    assert [(await per_tenant.join(r)).leads for r in (a, b)] == [True, True]

    shared = RedisCoalescer(redis, keys, scope=CacheScope(shared=True))
    c_, d = _request("shared potion"), _request("shared potion").model_copy(update={"tenant": "studio-b"})
    first, second = await shared.join(c_), await shared.join(d)
    assert first.leads and not second.leads and second.leader == c_.job_id


async def test_closing_hands_back_every_follower_once_and_again_on_a_replay(coalescer):
    leader, *followers = [_request() for _ in range(5)]
    for request in (leader, *followers):
        await coalescer.join(request)
    key = await coalescer.led(leader.job_id)
    assert key == coalescing_key(leader)

    closing = await coalescer.close(key, leader.job_id, shareable=True)
    assert sorted(r.job_id for r in closing) == sorted(r.job_id for r in followers)
    assert closing[0].spec == leader.spec  # the whole request comes back
    assert sorted(r.job_id for r in await coalescer.close(key, leader.job_id, shareable=True)) == \
        sorted(r.job_id for r in followers)  # a replayed terminal event finds the same followers

    newcomer = _request()
    assert (await coalescer.join(newcomer)).leads  # the group is gone: a later request starts its own
    await coalescer.closed(key, leader.job_id)
    assert await coalescer.close(key, leader.job_id, shareable=True) == []
    assert await coalescer.led(leader.job_id) is None


async def test_a_lease_not_renewed_goes_to_a_follower_and_the_old_leader_waits(coalescer):
    leader, follower = _request(), _request()
    await coalescer.join(leader)
    await coalescer.join(follower)
    routed = c.GenerationRouted.from_request(leader, c.RouteDecision(
        path="primary", reason="test", primary_depth=0, threshold=50))
    await asyncio.sleep(0.4)
    assert await coalescer.hold(routed) == "leads"  # the call starts: the expired lease is renewed first
    assert await coalescer.take_over(coalescing_key(leader), leader.job_id) is None
    assert await coalescer.renew(routed)  # the generator keeps it while the call runs
    assert await coalescer.take_over(coalescing_key(leader), leader.job_id) is None  # not expired yet

    await asyncio.sleep(0.4)
    [group] = [g for g in await coalescer.groups() if g.key == coalescing_key(leader)]
    assert group.expired and group.leader == leader.job_id and group.waiting == 1
    promoted = await coalescer.take_over(group.key, leader.job_id)

    assert promoted is not None and promoted.job_id == follower.job_id
    assert await coalescer.hold(routed) == "parked"  # its redelivered message costs no second call
    assert not await coalescer.renew(routed)
    assert await coalescer.led(follower.job_id) == group.key
    [old] = await coalescer.close(group.key, follower.job_id, shareable=True)
    assert old.job_id == leader.job_id  # the new leader's image ends the old leader too


async def test_queue_position_counts_jobs_ahead_not_yet_taken(redis, connections):
    keys = KeySpace(connections.redis.key_prefix)
    book, jobs = RedisQueueBook(redis, keys), RedisJobStore(redis, keys)
    ids = [c.new_job_id() for _ in range(4)]
    for job_id in ids:
        number = await book.routed("primary", job_id)
        assert await book.routed("primary", job_id) == number  # a replay keeps its number
        await jobs.update(job_id, "routed", queue_path="primary", queue_number=number)
    await book.started("primary", ids[0])
    await book.started("primary", ids[0])  # counted once
    assert (await book.estimate(ids[3])).start_in_s is None  # no rate measured yet

    await book.publish("primary", depth=3, rate=0.5)
    estimate = await book.estimate(ids[3])
    assert estimate.path == "primary" and estimate.position == 2
    assert estimate.start_in_s == pytest.approx(6.0)  # three more jobs must finish, at 0.5/s
    assert (await book.estimate(ids[1])).position == 0
    assert await book.estimate(c.new_job_id()) is None


# --------------------------------------------------------------------------------- the fan-out's policy


@dataclass
class _Depth:
    depth: int = 0
    rate: float = 1.0

    def routed_to_primary(self) -> None:
        pass


async def _group(coalescer: RedisCoalescer, n: int) -> tuple[FanOut, c.GenerationRequested, list]:
    """A fan-out over a router on fakes (Redis for the groups), and a leader with ``n`` parked followers."""
    router = RouterHandler(
        topics=TOPICS, depth=_Depth(), policy=HysteresisPolicy(high=10, low=5),
        paid=BudgetGate(MemoryBudgetLedger(cap_micros=usd("10")), cheapest_cost_micros=usd("0.0023")),
        jobs=MemoryJobStore(), routes=MemoryRouteStats(), cache=MemoryResultCache(), guard=MemoryTerminalGuard(),
        coalescer=coalescer)
    prompt = f"ice sword {c.new_job_id()}"  # a group of its own
    leader, *followers = [_request(prompt) for _ in range(n + 1)]
    assert (await router.handle(leader)).outputs  # routed
    for follower in followers:
        assert (await router.handle(follower)).outputs == ()  # parked: nothing forwarded
        assert (await router.jobs.get(follower.job_id)).coalesced_with == leader.job_id
    return FanOut(coalescer=coalescer, router=router, topics=TOPICS, jobs=router.jobs, guard=router.guard), \
        leader, followers


def _failed(leader: c.GenerationRequested, *, retryable: bool, code: str = "provider_rejected") -> c.GenerationFailed:
    return c.GenerationFailed(job_id=leader.job_id, tenant=leader.tenant, error=c.ErrorInfo(
        code=code, message="NSFW content detected", stage="generator", retryable=retryable))


async def test_the_leaders_image_completes_every_follower_once(coalescer):
    fan_out, leader, followers = await _group(coalescer, 3)
    completed = c.GenerationCompleted(
        job_id=leader.job_id, tenant=leader.tenant, url="https://cdn.test/ab/abc.png", object_key="ab/abc.png",
        sha256="a" * 64, content_type="image/png", size_bytes=123, spec=leader.spec, path="fallback",
        provider="replicate", deterministic=False)
    await fan_out.guard.claim(completed)

    outcome = await fan_out.handle(completed)
    events = [o.event for o in outcome.outputs]
    assert sorted(e.job_id for e in events) == sorted(f.job_id for f in followers)
    assert all(o.topic == "t.generation.completed" for o in outcome.outputs)
    assert {(e.url, e.sha256, e.coalesced_with, e.cached, e.path) for e in events} == {
        (completed.url, completed.sha256, leader.job_id, False, "fallback")}
    await outcome.on_acked()
    assert (await fan_out.jobs.get(followers[0].job_id)).status == "completed"
    assert (await fan_out.handle(completed)).outputs == ()  # a replay publishes nothing twice


async def test_a_permanent_failure_fails_the_followers_with_the_same_reason(coalescer):
    fan_out, leader, followers = await _group(coalescer, 2)
    outcome = await fan_out.handle(_failed(leader, retryable=False))

    events = [o.event for o in outcome.outputs]
    assert sorted(e.job_id for e in events) == sorted(f.job_id for f in followers)
    assert all(e.error.code == "provider_rejected" and not e.error.retryable for e in events)
    assert events[0].error.message == f"coalesced with job {leader.job_id}: NSFW content detected"


async def test_a_cancelled_or_retryable_leader_hands_its_followers_a_new_leader(coalescer):
    for ended in ("canceled", "retryable"):
        fan_out, leader, followers = await _group(coalescer, 3)
        failed = c.GenerationFailed.cancel(leader.job_id, leader.tenant, "player left", stage="ingest") \
            if ended == "canceled" else _failed(leader, retryable=True, code="provider_unavailable")
        cancelled_follower = followers[2]  # cancelled while it waited: it keeps its one terminal event
        await fan_out.guard.claim(c.GenerationFailed.cancel(cancelled_follower.job_id, "studio-a", "gone",
                                                            stage="ingest"))
        await fan_out.guard.mark_published(cancelled_follower.job_id)

        outcome = await fan_out.handle(failed)

        [routed] = outcome.outputs  # one follower routed as the new leader; the other waits on it; no third
        assert isinstance(routed.event, c.GenerationRouted) and routed.event.job_id in {f.job_id for f in followers}
        other = next(f for f in followers[:2] if f.job_id != routed.event.job_id)
        assert (await fan_out.jobs.get(other.job_id)).coalesced_with == routed.event.job_id, ended
