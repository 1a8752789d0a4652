"""The result cache: the same normalised request is answered from a stored image.

Two levels (seed 002): an in-process LRU with a short TTL in front of Redis (seed 004: 24 h).
The key is ``ImageSpec.cache_key()``, the SHA-256 of the normalised spec; the value is the
``GenerationCompleted`` event of the job that first made the image.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import Counter
from redis.asyncio import Redis

from services.common.contracts import GenerationCompleted
from services.common.redis import KeySpace

V = TypeVar("V")

CACHE_LOOKUPS = Counter("forgeline_cache_lookups_total", "Result cache lookups by outcome.", ["result"])


class LruTtlCache(Generic[V]):
    """A bounded in-process map whose entries expire ``ttl_s`` after they were set."""

    def __init__(self, maxsize: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._maxsize = maxsize
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def set(self, key: str, value: V) -> None:
        if self._maxsize <= 0 or self._ttl_s <= 0:
            return
        self._entries[key] = (self._clock() + self._ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._maxsize:
            self._entries.popitem(last=False)


class RedisResultCache:
    """``cache_key → GenerationCompleted``, local first, then Redis."""

    def __init__(self, redis: Redis, keys: KeySpace, *, ttl_s: int, local: LruTtlCache[GenerationCompleted]) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._local = local

    def _key(self, cache_key: str) -> str:
        return self._keys.key("cache", cache_key)

    async def get(self, cache_key: str) -> GenerationCompleted | None:
        found = self._local.get(cache_key)
        if found is not None:
            await self._count("hit_local")
            return found
        raw = await self._redis.get(self._key(cache_key))
        if raw is None:
            await self._count("miss")
            return None
        found = GenerationCompleted.model_validate_json(raw)
        self._local.set(cache_key, found)
        await self._count("hit_redis")
        return found

    async def put(self, cache_key: str, completed: GenerationCompleted) -> None:
        await self._redis.set(self._key(cache_key), completed.to_json_bytes(), ex=self._ttl_s)
        self._local.set(cache_key, completed)

    async def _count(self, result: str) -> None:
        CACHE_LOOKUPS.labels(result).inc()
        # Shared across replicas, for /v1/status's hit rate.
        await self._redis.hincrby(self._keys.key("stats", "cache"), result, 1)

    async def stats(self) -> dict[str, int]:
        raw = await self._redis.hgetall(self._keys.key("stats", "cache"))
        return {k.decode(): int(v) for k, v in raw.items()}
