"""A queued job's place on its path and when it should start, from two counters per path.

The router numbers each job it routes to a path (``routed``, after the broker acknowledged it);
a generator counts each job of the path it takes up (``started``), whatever it then does with
it. A job numbered ``n`` has ``n - 1 - started`` jobs ahead of it that no generator has taken
yet: its queue position. Each job is counted once (a ``SET NX`` marker per job), so a replayed
record does not skew the counts. Jobs are taken roughly in order across partitions, so the
position is an estimate, as the start is.

A job still queued means every slot of its path is busy, so it starts after ``position + 1``
more jobs finish: at the path's measured service rate, which the router writes here every time
it reads queue depth (``publish``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis.asyncio import Redis

from services.common.contracts import Path, utcnow
from services.common.jobs import job_key
from services.common.redis import KeySpace, hashtag

# KEYS: marker, counter.  ARGV: ttl s.  The counter's value for this job (counted once).
_COUNT_ONCE = """
local seen = redis.call('GET', KEYS[1])
if seen then return tonumber(seen) end
local n = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], n, 'EX', ARGV[1])
return n
"""


@dataclass(frozen=True)
class QueueEstimate:
    """Where a queued job stands: jobs ahead of it on ``path``, and when it should start."""

    path: str
    position: int
    start_in_s: float | None  # None: the path's rate is not measured yet (or nothing is served)
    start_at: datetime | None


class RedisQueueBook:
    """The per-path counters and measured rates, shared by routers, generators and ingest."""

    def __init__(self, redis: Redis, keys: KeySpace, *, marker_ttl_s: int = 24 * 3600) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = marker_ttl_s
        self._count_once = redis.register_script(_COUNT_ONCE)

    def _counter(self, path: str, what: str) -> str:
        return self._keys.key("queue", hashtag(path), what)

    async def _count(self, path: str, what: str, job_id: str) -> int:
        counter = self._counter(path, what)
        return int(await self._count_once(keys=[f"{counter}:{job_id}", counter], args=[self._ttl_s]))

    async def routed(self, path: Path, job_id: str) -> int:
        """Number ``job_id`` in its path's queue (the router, once the routed message is acknowledged)."""
        return await self._count(path, "routed", job_id)

    async def started(self, path: Path, job_id: str) -> None:
        """Count ``job_id`` as taken up by a generator of ``path``."""
        await self._count(path, "started", job_id)

    async def publish(self, path: Path, *, depth: int, rate: float) -> None:
        """The router's latest measurement of ``path``: queue depth and images served per second."""
        await self._redis.hset(self._counter(path, "measured"), mapping={
            "depth": depth, "rate": f"{rate:.6g}", "measured_at": utcnow().isoformat()})

    async def measured_depth(self, path: Path) -> int | None:
        """The depth of ``path`` the router measured last (and routes by); None before its first report."""
        depth = await self._redis.hget(self._counter(path, "measured"), "depth")
        return None if depth is None else int(depth)

    async def estimate(self, job_id: str) -> QueueEstimate | None:
        """The estimate for a job the router numbered; None for one it did not (yet)."""
        path, number = await self._redis.hmget(job_key(self._keys, job_id), "queue_path", "queue_number")
        if path is None or number is None:
            return None
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._counter(path.decode(), "started"))
            pipe.hget(self._counter(path.decode(), "measured"), "rate")
            started, rate = await pipe.execute()
        position = max(0, int(number) - 1 - int(started or 0))
        return _estimate(path.decode(), position, float(rate or 0))


def _estimate(path: str, position: int, rate: float) -> QueueEstimate:
    if rate <= 0 or math.isinf(rate) or math.isnan(rate):
        return QueueEstimate(path, position, None, None)
    start_in_s = (position + 1) / rate
    return QueueEstimate(path, position, round(start_in_s, 3), utcnow() + timedelta(seconds=start_in_s))
