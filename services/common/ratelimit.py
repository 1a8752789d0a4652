"""Per-tenant admission: a token bucket (the tenant's, and the key's own when it has one) plus a cap on
jobs in flight, decided in one Lua call so every ingest and router replica shares the same count.

The clock is Redis's (``TIME``), so replicas with skewed clocks agree. Every key of one call
carries the tenant as its hash tag: the script runs on one node of a Redis Cluster.

In-flight jobs are a sorted set per tenant (job id → deadline). A job joins it when admitted and
leaves when its terminal status is written (``RedisJobStore.update``); a job lost on the way
leaves at its deadline, so a lost job cannot hold a slot forever. A job already in the set is
admitted again without spending a token: the router re-checks jobs ingest admitted, and replays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis

from services.common.redis import KeySpace, hashtag
from services.common.tenants import Caller, Limits

#: How long an admitted job may hold an in-flight slot if its terminal status never arrives.
IN_FLIGHT_DEADLINE_S = 3600

# KEYS: tenant bucket, key bucket, in-flight set.
# ARGV: tenant rate/s, tenant burst, key rate/s, key burst (0 = none), in-flight cap (0 = none), job id ("" =
# not a job), deadline s.
# Returns {allowed, reason, retry_after_ms, remaining, burst, full_in_ms}; reason: "", "rate" or "in_flight".
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local job = ARGV[6]
if job ~= '' and redis.call('ZSCORE', KEYS[3], job) then return {1, '', 0, -1, 0, 0} end
local buckets = {}
for i = 1, 2 do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  if burst > 0 then
    local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
    local tokens, ts = tonumber(state[1]) or burst, tonumber(state[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
    buckets[#buckets + 1] = {KEYS[i], rate, burst, tokens}
  end
end
for _, b in ipairs(buckets) do
  if b[4] < 1 then
    return {0, 'rate', math.ceil((1 - b[4]) * 1000 / b[2]), 0, b[3], math.ceil((b[3] - b[4]) * 1000 / b[2])}
  end
end
if job ~= '' and tonumber(ARGV[5]) > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then
    return {0, 'in_flight', 1000, 0, 0, 0}
  end
end
local tightest, remaining, full_in = 0, -1, 0
for _, b in ipairs(buckets) do
  local left = b[4] - 1
  redis.call('HSET', b[1], 'tokens', tostring(left), 'ts', now)
  redis.call('PEXPIRE', b[1], math.ceil(b[3] * 1000 / b[2]) + 1000)
  if remaining < 0 or left < remaining then
    remaining, tightest, full_in = left, b[3], math.ceil((b[3] - left) * 1000 / b[2])
  end
end
if job ~= '' then redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]) * 1000, job) end
return {1, '', 0, math.floor(remaining), tightest, full_in}
"""


@dataclass(frozen=True)
class Admission:
    """What one admission check decided, with what the RateLimit headers say."""

    allowed: bool
    reason: str  # "" when allowed; "rate" or "in_flight" when not
    retry_after_s: int
    remaining: int | None  # None: no bucket applies
    burst: int
    full_in_s: int

    def headers(self, caller: Caller) -> dict[str, str]:
        """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers), ``Retry-After`` on a refusal.

        The policy's quota is the bucket's size and its window the time an empty bucket takes to refill.
        """
        headers: dict[str, str] = {}
        policy = _tightest(caller)
        if policy is not None:
            rate, burst = policy
            headers["RateLimit-Policy"] = f'"tenant";q={burst};w={max(1, math.ceil(burst / rate))}'
            if self.remaining is not None:
                headers["RateLimit"] = f'"tenant";r={max(0, self.remaining)};t={self.full_in_s}'
        if not self.allowed:
            headers["Retry-After"] = str(max(1, self.retry_after_s))
        return headers


def _tightest(caller: Caller) -> tuple[float, int] | None:
    """(rate, burst) of the bucket with the smaller rate, of the tenant's and the key's."""
    policies = [(limits.rate_per_s, limits.burst or max(1, math.ceil(limits.rate_per_s)))
                for limits in (caller.tenant_limits, caller.key_limits) if limits.rate_per_s]
    return min(policies) if policies else None


def _bucket(limits: Limits) -> tuple[float, int]:
    if not limits.rate_per_s:
        return 0.0, 0
    return limits.rate_per_s, limits.burst or max(1, math.ceil(limits.rate_per_s))


def in_flight_key(keys: KeySpace, tenant: str) -> str:
    return keys.key("inflight", hashtag(tenant))


class RateLimiter:
    """Admits a request of a caller against its limits, in one Redis call."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        self._redis = redis
        self._keys = keys
        self._admit = redis.register_script(_ADMIT)

    async def admit(self, caller: Caller, *, job_id: str | None = None, buckets: bool = True) -> Admission:
        """Spend a token of the caller's buckets (``buckets``) and, for ``job_id``, take an in-flight slot."""
        tenant_rate, tenant_burst = _bucket(caller.tenant_limits) if buckets else (0.0, 0)
        key_rate, key_burst = _bucket(caller.key_limits) if buckets else (0.0, 0)
        cap = caller.tenant_limits.max_in_flight or 0
        if not (tenant_burst or key_burst or (cap and job_id)):
            return Admission(True, "", 0, None, 0, 0)
        tag = hashtag(caller.tenant)
        allowed, reason, retry_ms, remaining, burst, full_ms = await self._admit(
            keys=[self._keys.key("bucket", tag), self._keys.key("bucket", tag, caller.key_id or "-"),
                  in_flight_key(self._keys, caller.tenant)],
            args=[tenant_rate, tenant_burst, key_rate, key_burst, cap, job_id or "", IN_FLIGHT_DEADLINE_S])
        reason = reason.decode() if isinstance(reason, bytes) else reason
        return Admission(bool(allowed), reason, math.ceil(int(retry_ms) / 1000), None if int(remaining) < 0 else
                         int(remaining), int(burst), math.ceil(int(full_ms) / 1000))

    async def release(self, tenant: str, job_id: str) -> None:
        """Free the job's in-flight slot (a cache hit, or a job that ended)."""
        await self._redis.zrem(in_flight_key(self._keys, tenant), job_id)
