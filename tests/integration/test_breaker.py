"""What only the Redis circuit breaker does: every replica sees one state.

Its behaviour (threshold, cooldown, half-open trial) is in ``tests/contracts/test_breaker.py``.
"""

from __future__ import annotations

import pytest

from services.common.breaker import RedisCircuitBreaker
from services.common.redis import KeySpace
from tests.helpers import ManualClock

pytestmark = pytest.mark.integration


def _breaker(redis, connections, clock, **kwargs) -> RedisCircuitBreaker:
    return RedisCircuitBreaker(redis, KeySpace(connections.redis.key_prefix), "hf-space-a", clock=clock, **kwargs)


async def test_state_is_shared_between_replicas(redis, connections):
    clock = ManualClock(1_000_000.0)
    replica_a = _breaker(redis, connections, clock, threshold=1)
    replica_b = _breaker(redis, connections, clock, threshold=1)

    await replica_a.failure()

    assert not await replica_b.allows()
