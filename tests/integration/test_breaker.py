"""The provider circuit breaker, shared through the real Redis."""

from __future__ import annotations

import pytest

from services.common.breaker import RedisCircuitBreaker
from services.common.redis import KeySpace

pytestmark = pytest.mark.integration


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _breaker(redis, connections, clock, **kwargs) -> RedisCircuitBreaker:
    return RedisCircuitBreaker(redis, KeySpace(connections.redis.key_prefix), "hf-space-a", clock=clock, **kwargs)


async def test_opens_after_threshold_failures_and_closes_after_a_successful_trial(redis, connections):
    clock = _Clock()
    breaker = _breaker(redis, connections, clock, threshold=3, cooldown_s=300)

    assert [await breaker.failure() for _ in range(2)] == [None, None]
    assert await breaker.allows()
    assert await breaker.failure() == clock.now + 300
    assert not await breaker.allows()
    assert (await breaker.state()).state == "open"

    clock.now += 301  # cooldown over: one trial call is allowed
    assert await breaker.allows()
    assert (await breaker.state()).state == "half_open"
    await breaker.success()
    assert (await breaker.state()).state == "closed"


async def test_a_failed_trial_opens_it_again_at_once(redis, connections):
    clock = _Clock()
    breaker = _breaker(redis, connections, clock, threshold=2, cooldown_s=60)
    await breaker.failure()
    await breaker.failure()
    clock.now += 61

    assert await breaker.failure() == clock.now + 60
    assert not await breaker.allows()


async def test_state_is_shared_between_replicas(redis, connections):
    clock = _Clock()
    replica_a = _breaker(redis, connections, clock, threshold=1)
    replica_b = _breaker(redis, connections, clock, threshold=1)

    await replica_a.failure()

    assert not await replica_b.allows()
