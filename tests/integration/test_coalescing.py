"""The coalescing groups and queue counters on a real Redis: leader election, parking, closing,
takeover of a lease that was not renewed, and queue positions."""

from __future__ import annotations

import asyncio

import pytest

from services.common import contracts as c
from services.common.coalescing import RedisCoalescer, coalescing_key
from services.common.jobs import RedisJobStore
from services.common.queue_position import RedisQueueBook
from services.common.redis import KeySpace

pytestmark = pytest.mark.integration


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
    assert await coalescer.renew(routed)  # the generator keeps it while the call runs
    assert await coalescer.take_over(coalescing_key(leader), leader.job_id) is None  # not expired yet

    await asyncio.sleep(0.4)
    [group] = [g for g in await coalescer.groups() if g.key == coalescing_key(leader)]
    assert group.expired and group.leader == leader.job_id and group.waiting == 1
    promoted = await coalescer.take_over(group.key, leader.job_id)

    assert promoted is not None and promoted.job_id == follower.job_id
    assert await coalescer.parked(routed)  # its redelivered message costs no second call
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
