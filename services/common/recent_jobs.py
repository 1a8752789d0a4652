"""The latest completed generations in Redis: one capped list ``recent:completed`` of job ids.

Storage and the comparer add a job once its completed event is acknowledged; the dashboard
reads the ids and then each job's status. One list of short ids, trimmed on every add, so it
costs one round trip per completion and nothing per API request.
"""

from __future__ import annotations

from redis.asyncio import Redis

from services.common.redis import KeySpace

DEFAULT_CAPACITY = 48

# KEYS: the list.  ARGV: job id, capacity.  A replayed completion moves to the front, once.
_ADD = """
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
"""


class RedisRecentJobs:
    """``RecentJobs`` over one Redis list (one key, so one slot on Redis Cluster)."""

    def __init__(self, redis: Redis, keys: KeySpace, *, capacity: int = DEFAULT_CAPACITY) -> None:
        self._redis = redis
        self._key = keys.key("recent", "completed")
        self._capacity = capacity
        self._add = redis.register_script(_ADD)

    async def add(self, job_id: str) -> None:
        # One script, atomic as MULTI was, and one command in the loop turn's write (``AutoPipelineRedis``),
        # where a MULTI pipeline took a connection and a write of its own.
        await self._add(keys=[self._key], args=[job_id, self._capacity])

    async def latest(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        raw = await self._redis.lrange(self._key, 0, min(limit, self._capacity) - 1)
        return [job_id.decode() for job_id in raw]
