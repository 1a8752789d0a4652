"""What auto-pipelining saves: the same job-shaped Redis traffic through redis-py's client and through Forgeline's.

    python bench/redis_autopipeline.py [-n 3000] [--concurrency 1 16] [--runs 3]   # Redis of FORGELINE_REDIS_URL

Each "job" makes the calls a pipeline stage makes: three reads at once (duplicate checks and a
cache lookup), a Lua status write, three writes at once, a second Lua call and a read, ten
commands in all. N jobs run with C of them at a time, first on ``redis.asyncio.Redis`` (the
baseline), then on ``AutoPipelineRedis``, in turn for each run. Prints, per client, the medians of
the runs: the client process's CPU per job, Redis's own CPU per job (``INFO cpu``) and wall time per
job; then the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

from redis.asyncio import Redis

from services.common.autopipeline import AutoPipelineRedis
from services.common.redis import KeySpace
from services.common.settings import RedisSettings

STATUS = "redis.call('HSET', KEYS[1], 'status', ARGV[1]); return redis.call('HGET', KEYS[1], 'status')"


async def _job(redis: Redis, status, keys: KeySpace, i: int) -> None:
    job = keys.key("job", str(i))
    await asyncio.gather(redis.get(job + ":forwarded"), redis.exists(job + ":finished"), redis.get(job + ":cache"))
    await status(keys=[job], args=["routed"])
    await asyncio.gather(redis.set(job + ":forwarded", "1", ex=60), redis.incr(keys.key("routes")),
                         redis.hset(job + ":queue", "n", i))
    await status(keys=[job], args=["generated"])
    await redis.get(job + ":forwarded")


async def _redis_cpu_s(admin: Redis) -> float:
    info = await admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _run(client_class: type[Redis], settings: RedisSettings, n: int, concurrency: int) -> dict[str, float]:
    keys = KeySpace(f"bench:autopipe:{uuid.uuid4().hex[:8]}:")
    redis = client_class.from_url(settings.url.get_secret_value(), socket_timeout=settings.socket_timeout_s)
    admin = Redis.from_url(settings.url.get_secret_value())
    status = redis.register_script(STATUS)
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            await _job(redis, status, keys, i)

    try:
        await one(-1)  # connections open, script loaded
        redis_cpu, cpu, wall = await _redis_cpu_s(admin), time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        redis_cpu = await _redis_cpu_s(admin) - redis_cpu
        return {"client CPU µs/job": cpu / n * 1e6, "Redis CPU µs/job": redis_cpu / n * 1e6,
                "wall µs/job": wall / n * 1e6}
    finally:
        async for key in admin.scan_iter(match=keys.prefix + "*", count=1000):
            await admin.delete(key)
        await redis.aclose()
        await admin.aclose()


async def main(n: int, concurrencies: list[int], runs: int) -> None:
    settings = RedisSettings()
    print(f"{n} jobs of 10 commands each, {runs} runs, Redis at {settings.url.get_secret_value().split('@')[-1]}")
    for concurrency in concurrencies:
        figures: dict[str, list[dict[str, float]]] = {"redis-py": [], "auto-pipelined": []}
        for run in range(runs):
            for name, client_class in (("redis-py", Redis), ("auto-pipelined", AutoPipelineRedis)):
                figures[name].append(await _run(client_class, settings, n, concurrency))
            print(f"  {concurrency} at a time, run {run + 1}/{runs} done", flush=True)
        medians = {name: {k: statistics.median(r[k] for r in results) for k in results[0]}
                   for name, results in figures.items()}
        print(f"\n{concurrency} job(s) at a time (medians of {runs})")
        print(f"{'':16}" + "".join(f"{k:>20}" for k in medians["redis-py"]))
        for name, values in medians.items():
            print(f"{name:16}" + "".join(f"{v:20.0f}" for v in values.values()))
        print(f"{'ratio':16}" + "".join(f"{medians['auto-pipelined'][k] / medians['redis-py'][k]:20.2f}"
                                        for k in medians["redis-py"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="jobs per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="jobs at a time")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.concurrency, args.runs))
