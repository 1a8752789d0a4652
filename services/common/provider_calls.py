"""The paid calls each job has made, in Redis: what lets a replay resume a call instead of paying twice.

A generator killed while it waits on a Replicate prediction leaves the routed record uncommitted,
so another generator replays the job. If the first one had written down the prediction's id, the
replay polls that prediction; otherwise it would create, and pay for, a second one.

Per job and provider, under the service's ``KeySpace`` prefix and the job's hash tag:

* ``call:{<job>}:<provider>`` hash ``seq`` (the current call, 1 when absent) and ``id`` (the
  provider's id of it, once known). ``close`` moves ``seq`` on and forgets ``id``;
* ``call:{<job>}:<provider>:claim:<seq>`` a ``SET NX PX`` claim held while call ``seq`` is being
  created, so two replays of the same job running at once create one call; it expires on its
  own when its holder dies mid-create.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from redis.asyncio import Redis

from services.common.redis import KeySpace, hashtag

__all__ = ["PaidCall", "RedisProviderCalls"]


@dataclass(frozen=True)
class PaidCall:
    """A job's current call to one provider: its number, and the provider's id once it was created."""

    seq: int
    call_id: str | None = None


# KEYS: call hash.  ARGV: seq, call id, ttl s.  Returns 1 when recorded, 0 when call seq was closed meanwhile.
_RECORD = """
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '1') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'id', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: call hash.  ARGV: seq, ttl s.  Closing an old call again changes nothing.
_CLOSE = """
if tonumber(redis.call('HGET', KEYS[1], 'seq') or '1') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'seq', tonumber(ARGV[1]) + 1)
redis.call('HDEL', KEYS[1], 'id')
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisProviderCalls:
    """``ProviderCalls`` in Redis, shared by every generator replica."""

    def __init__(self, redis: Redis, keys: KeySpace, *, ttl_s: int = 2 * 24 * 3600) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s  # longer than any replay can come late: the routed record's retention is what bounds it
        self._record = redis.register_script(_RECORD)
        self._close = redis.register_script(_CLOSE)

    def _key(self, job_id: str, provider: str) -> str:
        return self._keys.key("call", hashtag(job_id), provider)

    async def current(self, job_id: str, provider: str) -> PaidCall:
        seq, call_id = await self._redis.hmget(self._key(job_id, provider), ["seq", "id"])
        return PaidCall(int(seq or 1), call_id.decode() if call_id else None)

    async def claim(self, job_id: str, provider: str, seq: int, ttl_s: float) -> bool:
        key = f"{self._key(job_id, provider)}:claim:{seq}"
        return bool(await self._redis.set(key, uuid.uuid4().hex, nx=True, px=max(1, int(ttl_s * 1000))))

    async def record(self, job_id: str, provider: str, seq: int, call_id: str) -> bool:
        return bool(await self._record(keys=[self._key(job_id, provider)], args=[seq, call_id, self._ttl_s]))

    async def close(self, job_id: str, provider: str, seq: int) -> None:
        await self._close(keys=[self._key(job_id, provider)], args=[seq, self._ttl_s])
