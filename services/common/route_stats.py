"""The route split in Redis: one hash ``stats:routes`` of path → jobs sent, shared by every router replica.

Routers count, after the routed record is acknowledged; ingest's ``/v1/status`` reads.
"""

from __future__ import annotations

from redis.asyncio import Redis

from services.common.redis import KeySpace


class RedisRouteStats:
    """``RouteStats`` over one Redis hash."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        self._redis = redis
        self._key = keys.key("stats", "routes")

    async def count(self, path: str) -> None:
        await self._redis.hincrby(self._key, path, 1)

    async def counts(self) -> dict[str, int]:
        raw = await self._redis.hgetall(self._key)
        return {name.decode(): int(value) for name, value in raw.items()}
