"""What the spend journal costs a paid call, and how long rebuilding a lost ledger takes.

Starts its own Redis and S3 (``--s3-server``: S3Proxy, as the dev stack runs, or moto) from the
dev stack's components, in a throwaway state folder
on free ports, and stops them at the end. Then, in the same run:

1. baseline: ``--calls`` reserve + settle cycles on the Redis ledger alone;
2. the same cycles with the S3 spend journal (two small PUTs per paid call);
3. the ledger's keys deleted (a Redis that lost its data), then the first reserve, which lists
   and reads the month's journal and seeds the totals before granting.

    python bench/budget_journal.py --calls 500
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from services.common.budget import RedisBudgetLedger, format_usd, usd
from services.common.redis import KeySpace, make_redis
from services.common.settings import RedisSettings, S3Settings
from services.common.spend_journal import S3SpendJournal
from services.devstack.process import free_ports
from services.devstack.redis import RedisComponent
from services.devstack.s3 import s3_component
from services.devstack.settings import DevStackSettings

COST = usd("0.0023")


async def cycles(ledger: RedisBudgetLedger, calls: int, tag: str) -> list[float]:
    took = []
    for n in range(calls):
        began = time.perf_counter()
        reservation = await ledger.reserve(f"{tag}-{n}:replicate:1", COST)
        assert reservation is not None, "the bench cap was reached"
        await ledger.settle(reservation)
        took.append(time.perf_counter() - began)
    return took


def describe(name: str, took: list[float], baseline: list[float] | None = None) -> None:
    p50, p95 = statistics.median(took) * 1000, statistics.quantiles(took, n=20)[18] * 1000
    ratio = f"  ({statistics.median(took) / statistics.median(baseline):.1f}x baseline p50)" if baseline else ""
    print(f"{name:34} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  per reserve+settle{ratio}")


async def run(redis_url: str, s3: S3Settings, calls: int) -> None:
    redis = make_redis(RedisSettings(url=redis_url))
    try:
        plain = RedisBudgetLedger(redis, KeySpace("bench-plain:"), cap_micros=usd("$1000"))
        baseline = await cycles(plain, calls, "plain")
        describe("Redis ledger alone", baseline)

        keys = KeySpace("bench-journal:")
        journal = S3SpendJournal(s3, prefix="billing/bench")
        ledger = RedisBudgetLedger(redis, keys, cap_micros=usd("$1000"), journal=journal)
        describe("Redis ledger + S3 spend journal", await cycles(ledger, calls, "journal"), baseline)

        spent = (await ledger.snapshot()).spent_micros
        await redis.delete(*[k async for k in redis.scan_iter(match=keys.key("{budget}") + "*")])
        began = time.perf_counter()
        assert await ledger.reserve("after-loss:replicate:1", COST) is not None
        rebuild = time.perf_counter() - began
        rebuilt = (await ledger.snapshot()).spent_micros
        print(f"rebuild of {calls} journal entries + first grant: {rebuild * 1000:.0f} ms "
              f"({rebuild / statistics.median(baseline):.0f}x one baseline call); spent before the loss "
              f"{format_usd(spent)}, after the rebuild {format_usd(rebuilt)}")
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--s3-server", choices=("s3proxy", "moto"), default="s3proxy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as state:
        redis_port, s3_port = free_ports(2)
        settings = DevStackSettings(state_dir=Path(state), redis_port=redis_port, s3_port=s3_port,
                                    s3_server=args.s3_server)
        redis, s3 = RedisComponent(settings), s3_component(settings)
        redis.start()
        s3.start()
        try:
            asyncio.run(run(f"redis://127.0.0.1:{redis_port}/0",
                            S3Settings(endpoint_url=s3.endpoint, bucket=settings.s3_bucket), args.calls))
        finally:
            s3.stop()
            redis.stop()


if __name__ == "__main__":
    main()
