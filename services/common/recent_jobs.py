"""The latest completed generations in Redis: one capped list ``recent:completed`` of job ids.

Storage and the comparer add a job once its completed event is acknowledged; the dashboard
reads the ids and then each job's status. One list of short ids, trimmed on every add, so it
costs one round trip per completion and nothing per API request.
"""

from __future__ import annotations

from redis.asyncio import Redis

from services.common.redis import KeySpace

DEFAULT_CAPACITY = 48


class RedisRecentJobs:
    """``RecentJobs`` over one Redis list (one key, so one slot on Redis Cluster)."""

    def __init__(self, redis: Redis, keys: KeySpace, *, capacity: int = DEFAULT_CAPACITY) -> None:
        self._redis = redis
        self._key = keys.key("recent", "completed")
        self._capacity = capacity

    async def add(self, job_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._key, 0, job_id)  # a replayed completion moves to the front, once
            pipe.lpush(self._key, job_id)
            pipe.ltrim(self._key, 0, self._capacity - 1)
            await pipe.execute()

    async def latest(self, limit: int) -> list[str]:
        if limit <= 0:
            return []
        raw = await self._redis.lrange(self._key, 0, min(limit, self._capacity) - 1)
        return [job_id.decode() for job_id in raw]
