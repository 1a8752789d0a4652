"""What only the Redis budget ledger does: its key layout, and replicas and processes racing for the cap.

The ledger's rules (arithmetic, idempotency, months, expiry) are in ``tests/contracts/test_budget.py``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from services.common.budget import RedisBudgetLedger, usd
from services.common.redis import KeySpace, make_redis
from services.common.settings import RedisSettings
from tests.helpers import ManualClock

pytestmark = pytest.mark.integration

COST = usd("0.0023")
CAP = usd("0.10")
FITS = CAP // COST  # 43 images fit under $0.10


@pytest.fixture
def keys(connections) -> KeySpace:
    return KeySpace(connections.redis.key_prefix)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2025, 3, 14, 12, 0, tzinfo=UTC))


async def _totals(ledger: RedisBudgetLedger, month: str | None = None) -> tuple[int, int]:
    snap = await ledger.snapshot(month)
    return snap.spent_micros, snap.reserved_micros


async def test_the_month_totals_are_one_hash(redis, keys, clock):
    ledger = RedisBudgetLedger(redis, keys, cap_micros=usd("$10"), clock=clock)
    a = await ledger.reserve("job-a", COST)
    b = await ledger.reserve("job-b", 5 * COST)
    assert await ledger.settle(a, actual_cost_micros=2_000)
    assert await ledger.refund(b)

    assert await redis.hgetall(ledger.month_key()) == {b"spent": b"2000", b"reserved": b"0"}


async def test_replicas_reserving_the_same_jobs_hold_each_once(connections, keys, clock):
    clients = [make_redis(connections.redis) for _ in range(8)]
    try:
        ledgers = [RedisBudgetLedger(r, keys, cap_micros=usd("$10"), clock=clock) for r in clients]
        jobs = [f"shared-{i}" for i in range(50)]

        async def replica(ledger: RedisBudgetLedger, seed: int) -> dict[str, str]:
            order = random.Random(seed).sample(jobs, len(jobs))
            return {job: (await ledger.reserve(job, COST)).reservation_id for job in order}

        seen = await asyncio.gather(*(replica(ledger, i) for i, ledger in enumerate(ledgers)))
        assert all(view == seen[0] for view in seen)  # every replica got the one reservation per job
        assert await _totals(ledgers[0]) == (0, len(jobs) * COST)
    finally:
        for r in clients:
            await r.aclose()


# ------------------------------------------------------------------------------------ the race


@dataclass
class Tally:
    granted: int = 0
    refused: int = 0
    settled: int = 0
    refunded: int = 0


async def _race(ledger: RedisBudgetLedger, name: str, attempts: int, refund_ratio: float, seed: int) -> Tally:
    """One replica: ``attempts`` jobs, each reserved, then after a short while settled or refunded."""
    rng, tally, pending = random.Random(seed), Tally(), []

    async def finish(reservation) -> None:
        await asyncio.sleep(rng.random() * 0.003)
        # Await first, then count: ``tally.x += await ...`` would read x before the await and lose updates.
        if rng.random() < refund_ratio:
            refunded = await ledger.refund(reservation)
            tally.refunded += refunded
        else:
            settled = await ledger.settle(reservation)
            tally.settled += settled

    for i in range(attempts):
        reservation = await ledger.reserve(f"{name}-{i}", COST)
        if reservation is None:
            tally.refused += 1
        else:
            tally.granted += 1
            pending.append(asyncio.create_task(finish(reservation)))
        await asyncio.sleep(0)
    await asyncio.gather(*pending)
    return tally


async def _sample(ledger: RedisBudgetLedger, stop: asyncio.Event) -> int:
    """Snapshots while the race runs; each is one atomic script, so a sum over cap would be caught."""
    samples = 0
    while not stop.is_set():
        snap = await ledger.snapshot()
        assert snap.spent_micros + snap.reserved_micros <= CAP, snap
        samples += 1
    return samples


def _check_end(snap, tallies: list[Tally], refund_ratio: float) -> None:
    settled = sum(t.settled for t in tallies)
    assert snap.spent_micros <= CAP and snap.reserved_micros == 0
    assert snap.spent_micros == settled * COST
    assert sum(t.refunded for t in tallies) + settled == sum(t.granted for t in tallies)
    if refund_ratio == 0:
        assert sum(t.granted for t in tallies) == FITS
    else:
        assert settled <= FITS


@pytest.mark.parametrize("refund_ratio", [0.0, 0.3])
async def test_concurrent_replicas_never_overshoot_the_cap(connections, keys, unique, clock, refund_ratio):
    workers = 8
    clients = [make_redis(connections.redis) for _ in range(workers + 1)]  # one connection per replica
    try:
        # A fixed clock: a race that happened to straddle a month boundary would split the totals.
        ledgers = [RedisBudgetLedger(r, keys, cap_micros=CAP, clock=clock) for r in clients]
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(ledgers[-1], stop))
        tallies = await asyncio.gather(*(
            _race(ledger, f"{unique}-w{i}", 100, refund_ratio, seed=i) for i, ledger in enumerate(ledgers[:-1])))
        stop.set()
        samples = await sampler

        _check_end(await ledgers[-1].snapshot(), tallies, refund_ratio)
        assert samples >= 5
        assert all(t.granted + t.refused == 100 for t in tallies)
    finally:
        for r in clients:
            await r.aclose()


def _process_replica(url: str, prefix: str, now: datetime, name: str, refund_ratio: float, seed: int) -> Tally:
    """A replica in its own OS process: its own event loop, client and connection."""

    async def run() -> Tally:
        redis = make_redis(RedisSettings(url=url, key_prefix=prefix))
        keys = KeySpace(prefix)
        try:
            await redis.incr(keys.key("race", "ready"))
            async with asyncio.timeout(60):  # start together, not as each spawns; never hang the pool
                while not await redis.exists(keys.key("race", "go")):
                    await asyncio.sleep(0.002)
            ledger = RedisBudgetLedger(redis, keys, cap_micros=CAP, clock=ManualClock(now))
            return await _race(ledger, name, 100, refund_ratio, seed)
        finally:
            await redis.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("refund_ratio", [0.0, 0.3])
async def test_replica_processes_never_overshoot_the_cap(connections, keys, redis, unique, clock, refund_ratio):
    processes = 4
    url, prefix = connections.redis.url.get_secret_value(), connections.redis.key_prefix
    loop = asyncio.get_running_loop()
    ledger = RedisBudgetLedger(redis, keys, cap_micros=CAP, clock=clock)
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [loop.run_in_executor(pool, _process_replica, url, prefix, clock.now, f"{unique}-p{i}",
                                        refund_ratio, i)
                   for i in range(processes)]
        async with asyncio.timeout(60):
            while int(await redis.get(keys.key("race", "ready")) or 0) < processes:
                await asyncio.sleep(0.01)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(ledger, stop))
        await redis.set(keys.key("race", "go"), 1)
        try:
            tallies = await asyncio.gather(*futures)
        finally:
            stop.set()
            samples = await sampler

    _check_end(await ledger.snapshot(), list(tallies), refund_ratio)
    assert samples >= 5
