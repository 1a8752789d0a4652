"""A circuit breaker per provider, shared by every replica through Redis.

A provider that fails ``threshold`` times in a row (retryable failures: 5xx, timeouts, broken
streams) is marked down for ``cooldown_s`` (default 5 min, seed 000); while down, callers skip it
and go to the next provider of their path. After the cooldown, the next call is a trial: a
success closes the breaker, a failure opens it again at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Gauge
from redis.asyncio import Redis

from services.common.redis import KeySpace

PROVIDER_DOWN = Gauge("forgeline_provider_down", "1 while a provider's circuit breaker is open.", ["provider"])

# KEYS: breaker hash.  ARGV: now, threshold, cooldown_s.  Returns the down-until time (0 when closed).
_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local down_until = tonumber(redis.call('HGET', KEYS[1], 'down_until') or '0')
local now = tonumber(ARGV[1])
if failures >= tonumber(ARGV[2]) or down_until > 0 then
  down_until = now + tonumber(ARGV[3])
  redis.call('HSET', KEYS[1], 'down_until', down_until, 'opened_at', now)
end
return tostring(down_until)
"""


@dataclass(frozen=True)
class BreakerState:
    provider: str
    state: str  # closed | open | half_open
    consecutive_failures: int
    down_until: datetime | None


class RedisCircuitBreaker:
    def __init__(self, redis: Redis, keys: KeySpace, provider: str, *, threshold: int = 5, cooldown_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._key = keys.key("breaker", provider)
        self.provider = provider
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failure = redis.register_script(_FAILURE)

    async def allows(self) -> bool:
        """False while the breaker is open; True when closed or when the cooldown is over (a trial)."""
        down_until = float(await self._redis.hget(self._key, "down_until") or 0)
        is_open = down_until > self._clock()
        PROVIDER_DOWN.labels(self.provider).set(1 if is_open else 0)
        return not is_open

    async def success(self) -> None:
        await self._redis.hset(self._key, mapping={"failures": 0, "down_until": 0})
        PROVIDER_DOWN.labels(self.provider).set(0)

    async def failure(self) -> float | None:
        """Count a retryable failure; returns when the provider comes back if this opened the breaker."""
        down_until = float(await self._failure(keys=[self._key], args=[self._clock(), self._threshold, self._cooldown_s]))
        if down_until > self._clock():
            PROVIDER_DOWN.labels(self.provider).set(1)
            return down_until
        return None

    async def state(self) -> BreakerState:
        raw = await self._redis.hgetall(self._key)
        failures = int(raw.get(b"failures", 0))
        down_until = float(raw.get(b"down_until", 0))
        if down_until > self._clock():
            state = "open"
        elif down_until > 0:
            state = "half_open"
        else:
            state = "closed"
        until = datetime.fromtimestamp(down_until, UTC) if down_until else None
        return BreakerState(self.provider, state, failures, until)
