"""What per-tenant budgets and the router's tenant limits cost, against round trips measured in the same run.

    python bench/tenant_budget.py [-n 3000] [--runs 3]   # on the Redis of FORGELINE_REDIS_URL (`forgeline dev env`)

Per call, p50 and p99 (the median of ``--runs`` runs):

* ``PING``: a bare Redis round trip, the floor;
* the reserve script alone, as it was at ``BEFORE`` (read from git) and now, with no tenant and with
  a tenant that has a cap of its own, each on keys of its own with the arguments the ledger passes;
* ``RedisBudgetLedger.reserve`` whole (the script, decoding, metrics; the tenant's cap read through
  ``TenantStore``'s in-process cache), each reservation refunded after, untimed;
* the router's check of a request produced straight to Kafka: the job lookup and the tenant's bucket
  (``KafkaNativeLimits.refusal``), and of one ingest admitted already (the job lookup alone).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import time
import uuid
from pathlib import Path

from services.common import budget_lua as lua
from services.common.budget import RedisBudgetLedger
from services.common.contracts import GenerationRequested, ImageSpec, new_job_id
from services.common.jobs import RedisJobStore
from services.common.ratelimit import RateLimiter
from services.common.redis import KeySpace, hashtag, make_redis
from services.common.settings import RedisSettings
from services.common.tenants import TenantLimits, TenantStore
from services.router.limits import KafkaNativeLimits

BEFORE = "8bb6998"  # the last commit before per-tenant budgets
COST = 2_300
CAP = 10**12


def _old_reserve_script() -> str:
    """The reserve script before tenants, from git (the module defines SWEEP and RESERVE)."""
    source = subprocess.run(["git", "show", f"{BEFORE}:services/common/budget_lua.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    namespace: dict[str, str] = {}
    exec(compile(source, "budget_lua_before.py", "exec"), namespace)  # noqa: S102 — our own file, from git
    return namespace["RESERVE"]


async def _timed(n: int, call, after=None) -> list[float]:
    samples = []
    for i in range(n):
        start = time.perf_counter()
        result = await call(i)
        samples.append(time.perf_counter() - start)
        if after is not None:
            await after(result)
    return samples


def _p(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] * 1e6


async def one_run(n: int) -> dict[str, tuple[float, float]]:
    redis = make_redis(RedisSettings())
    keys = KeySpace(f"bench:{uuid.uuid4().hex[:8]}:")
    try:
        store = TenantStore(redis, keys)
        await store.set_limits("capped", TenantLimits(monthly_budget_usd=10**6))
        await store.set_limits("limited", TenantLimits(rate_per_s=1e9, burst=10**9))
        ledger = RedisBudgetLedger(redis, keys, cap_micros=CAP, tenants=store)
        scripts = {"before": redis.register_script(_old_reserve_script()), "now": redis.register_script(lua.RESERVE)}
        month = ledger.current_month()

        def raw_reserve(version: str, tenant: str | None):
            """The reserve script alone, on keys of its own, with the arguments the ledger passes."""
            base = keys.key(hashtag(f"budget-{version}-{tenant}"), month)
            month_keys = [base, base + ":pending", base + ":held"] + ([base + ":owners"] if version == "now" else [])

            async def call(i: int) -> None:
                now = int(time.time() * 1000)
                args = [now, f"r-{i}:{uuid.uuid4().hex[:12]}", COST, CAP, now + 900_000, 3600, 3600, month, 0]
                if version == "now":
                    args += [tenant or "", CAP if tenant else -1]
                await scripts[version](keys=[*month_keys, base + f":reservation:{i}"], args=args)

            return call

        limits = KafkaNativeLimits(store, RateLimiter(redis, keys), RedisJobStore(redis, keys))
        admitted = GenerationRequested(job_id=new_job_id(), tenant="limited", spec=ImageSpec(prompt="p"))
        await RedisJobStore(redis, keys).update(admitted.job_id, "queued", tenant="limited")

        def native(i: int) -> GenerationRequested:
            return GenerationRequested(job_id=f"native{i:010d}", tenant="limited", spec=ImageSpec(prompt="p"))

        samples = {
            "PING": await _timed(n, lambda i: redis.ping()),
            "reserve script, before tenants": await _timed(n, raw_reserve("before", None)),
            "reserve script, no tenant": await _timed(n, raw_reserve("now", None)),
            "reserve script, tenant with a cap": await _timed(n, raw_reserve("now", "capped")),
            "ledger.reserve, no tenant": await _timed(n, lambda i: ledger.reserve(f"none-{i}", COST), ledger.refund),
            "ledger.reserve, tenant with a cap": await _timed(
                n, lambda i: ledger.reserve(f"capped-{i}", COST, tenant="capped"), ledger.refund),
            "router: Kafka-native request": await _timed(n, lambda i: limits.refusal(native(i))),
            "router: request ingest admitted": await _timed(n, lambda i: limits.refusal(admitted)),
        }
        return {name: (_p(s, 50), _p(s, 99)) for name, s in samples.items()}
    finally:
        for found in [k async for k in redis.scan_iter(match=keys.prefix + "*")]:
            await redis.delete(found)
        await redis.aclose()


async def main(n: int, runs: int) -> None:
    results = [await one_run(n) for _ in range(runs)]
    print(f"{n} calls each, median of {runs} runs")
    print(f"{'':36} {'p50 µs':>9} {'p99 µs':>9} {'p50 / PING':>11} {'p50 / before':>13}")
    median = {name: tuple(statistics.median(r[name][q] for r in results) for q in (0, 1)) for name in results[0]}
    ping, before = median["PING"][0], median["reserve script, before tenants"][0]
    for name, (p50, p99) in median.items():
        print(f"{name:36} {p50:9.1f} {p99:9.1f} {p50 / ping:11.2f} {p50 / before:13.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.runs))
