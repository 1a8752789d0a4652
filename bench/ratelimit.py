"""The cost of the per-tenant admission check, against plain Redis round trips measured in the same run.

    python bench/ratelimit.py [-n 5000]        # on the Redis of FORGELINE_REDIS_URL (e.g. `forgeline dev env`)

Prints per-call p50/p99 of PING (a bare round trip), GET of a missing key (what the cache miss costs), the
admission Lua call with a tenant bucket and a key bucket, and the key lookup when it comes from the
in-process cache; then each as a ratio of PING.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from services.common.ratelimit import RateLimiter
from services.common.redis import KeySpace, make_redis
from services.common.settings import RedisSettings
from services.common.tenants import Limits, TenantLimits, TenantStore


async def _timed(n: int, call) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return samples


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] * 1e6


async def main(n: int) -> None:
    settings = RedisSettings()
    redis = make_redis(settings)
    keys = KeySpace(f"bench:{uuid.uuid4().hex[:8]}:")
    try:
        store, limiter = TenantStore(redis, keys), RateLimiter(redis, keys)
        await store.set_limits("bench", TenantLimits(rate_per_s=1e9, burst=10**9))
        _, key = await store.create_key("bench", Limits(rate_per_s=1e9, burst=10**9))
        caller = await store.caller(key)
        results = {
            "PING": await _timed(n, redis.ping),
            "GET (missing key)": await _timed(n, lambda: redis.get(keys.key("missing"))),
            "admit: 2 buckets, 1 Lua call": await _timed(n, lambda: limiter.admit(caller)),
            "key lookup (in-process cache)": await _timed(n, lambda: store.caller(key)),
        }
        baseline = statistics.median(results["PING"])
        print(f"{n} calls each, Redis at {settings.url.get_secret_value().split('@')[-1]}")
        print(f"{'':32} {'p50 µs':>9} {'p99 µs':>9} {'p50 / PING':>11}")
        for name, samples in results.items():
            print(f"{name:32} {_p(samples, 50):9.1f} {_p(samples, 99):9.1f} {statistics.median(samples) / baseline:11.2f}")
    finally:
        for found in [k async for k in redis.scan_iter(match=keys.prefix + "*")]:
            await redis.delete(found)
        await redis.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    asyncio.run(main(parser.parse_args().n))
