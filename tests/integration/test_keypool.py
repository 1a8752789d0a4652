"""What only the Redis key pool does: replicas share one state, concurrent picks stay atomic.

The behaviour both the pool and its fake promise (round-robin, cooldowns, disables, states) is
in ``tests/contracts/test_keypool.py``.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from services.common.keypool import ApiKey, NoKeyAvailable, RedisKeyPool
from services.common.redis import KeySpace, make_redis
from tests.helpers import ManualClock

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


@pytest.fixture
def keys(connections) -> KeySpace:
    return KeySpace(connections.redis.key_prefix)


@pytest.fixture
def api_keys() -> list[ApiKey]:
    return [ApiKey("hf", f"hf_{name * 34}") for name in "abc"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def pool(redis, keys, api_keys, clock) -> RedisKeyPool:
    return RedisKeyPool(redis, keys, "hf", api_keys, clock=clock)


async def _picks(pool: RedisKeyPool, n: int) -> list[str]:
    return [(await pool.pick()).key_id for _ in range(n)]


async def test_a_cooldown_from_replica_a_is_honoured_by_replica_b_on_its_next_pick(connections, keys, api_keys, clock):
    client_a, client_b = make_redis(connections.redis), make_redis(connections.redis)
    try:
        replica_a = RedisKeyPool(client_a, keys, "hf", api_keys, clock=clock)
        replica_b = RedisKeyPool(client_b, keys, "hf", api_keys, clock=clock)
        await replica_b.pick()  # B is warm: its script is loaded, and it must hold no stale copy of the state

        for key in api_keys[:2]:
            await replica_a.cooldown(key, 30, "429")

        assert [(await replica_b.pick()).key_id for _ in range(3)] == [api_keys[2].key_id] * 3
        await replica_a.disable(api_keys[2], "401 Unauthorized")
        with pytest.raises(NoKeyAvailable) as raised:
            await replica_b.pick()
        assert raised.value.retry_after_s == pytest.approx(30)
    finally:
        await client_a.aclose()
        await client_b.aclose()


async def test_concurrent_picks_are_evenly_spread(pool, api_keys):
    async def worker() -> list[str]:
        return await _picks(pool, 50)

    results = await asyncio.gather(*(worker() for _ in range(4)))
    counts = Counter(key_id for picks in results for key_id in picks)

    even = 200 / 3
    assert set(counts) == {k.key_id for k in api_keys}
    for count in counts.values():
        assert abs(count - even) <= 0.10 * even, counts
