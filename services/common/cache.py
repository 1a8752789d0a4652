"""The result cache: the same normalised request is answered from a stored image.

Two levels (seed 002): an in-process LRU with a short TTL in front of Redis (seed 004: 24 h).
The key is ``ImageSpec.cache_key(scope)``, the SHA-256 of the normalised spec and of whose results
may answer it (``CacheScope``: the job's tenant by default, nobody's in particular when shared); the
value is the ``GenerationCompleted`` event of the job that first made the image.
"""

from __future__ import annotations

import collections
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter
from redis.asyncio import Redis

from services.common.contracts import GenerationCompleted, ImageSpec
from services.common.redis import KeySpace
from services.common.settings import CacheSettings

V = TypeVar("V")


@dataclass(frozen=True)
class CacheScope:
    """Whose results answer a request: its own tenant's (the default) or every tenant's (``shared``).

    The one place the deployment's choice (``FORGELINE_CACHE_SCOPE``) turns into the cache key's
    scope; everything that computes a result-cache key for a job goes through ``key``.
    """

    shared: bool = False

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> CacheScope:
        return cls(shared=settings.scope == "shared")

    def of(self, tenant: str) -> str | None:
        """The ``scope`` argument of ``ImageSpec.cache_key`` for a job of ``tenant``."""
        return None if self.shared else tenant

    def key(self, spec: ImageSpec, tenant: str) -> str:
        """The result-cache key of ``spec`` asked for by ``tenant``."""
        return spec.cache_key(self.of(tenant))

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
    """``cache_key → GenerationCompleted``, local first, then Redis.

    The shared hit/miss counts (``/v1/status``'s hit rate) are added to Redis at most every
    ``stats_flush_s``, not once per lookup: a local hit then costs no Redis round trip of its own.
    """

    def __init__(self, redis: Redis, keys: KeySpace, *, ttl_s: int, local: LruTtlCache[GenerationCompleted],
                 stats_flush_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._local = local
        self._stats_flush_s = stats_flush_s
        self._clock = clock
        self._unflushed: collections.Counter[str] = collections.Counter()
        self._flushed_at = clock()

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
        self._unflushed[result] += 1
        if self._clock() - self._flushed_at >= self._stats_flush_s:
            await self._flush_stats()

    async def _flush_stats(self) -> None:
        """Add the counts since the last flush to the shared hash, in one round trip."""
        counts, self._unflushed = self._unflushed, collections.Counter()
        self._flushed_at = self._clock()
        if not counts:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for result, n in counts.items():
                    pipe.hincrby(self._keys.key("stats", "cache"), result, n)
                await pipe.execute()
        except BaseException:
            self._unflushed.update(counts)  # kept for the next flush
            raise

    async def stats(self) -> dict[str, int]:
        """Every replica's counts (this one's up to now; the others' up to their last flush)."""
        await self._flush_stats()
        raw = await self._redis.hgetall(self._keys.key("stats", "cache"))
        return {k.decode(): int(v) for k, v in raw.items()}
