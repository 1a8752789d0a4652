"""The budget ledger against the real Redis: arithmetic, idempotency, expiry, and replicas racing for the cap."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from services.common import contracts as c
from services.common.budget import RedisBudgetLedger, usd
from services.common.redis import KeySpace, make_redis
from services.common.settings import RedisSettings
from services.router.budget_gate import BudgetGate

pytestmark = pytest.mark.integration

COST = usd("0.0023")
CAP = usd("0.10")
FITS = CAP // COST  # 43 images fit under $0.10


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def keys(connections) -> KeySpace:
    return KeySpace(connections.redis.key_prefix)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2025, 3, 14, 12, 0, tzinfo=UTC))


async def _totals(ledger: RedisBudgetLedger, month: str | None = None) -> tuple[int, int]:
    snap = await ledger.snapshot(month)
    return snap.spent_micros, snap.reserved_micros


async def test_reserve_settle_refund_arithmetic(redis, keys, clock):
    ledger = RedisBudgetLedger(redis, keys, cap_micros=usd("$10"), clock=clock)

    a = await ledger.reserve("job-a", COST)
    b = await ledger.reserve("job-b", 5 * COST)
    assert a and b and (a.month, a.state, a.replayed) == ("2025-03", "reserved", False)
    assert await _totals(ledger) == (0, 6 * COST)

    assert await ledger.settle(a, actual_cost_micros=2_000)  # the provider billed less than reserved
    assert await _totals(ledger) == (2_000, 5 * COST)
    assert await ledger.refund(b)
    assert await _totals(ledger) == (2_000, 0)

    snap = await ledger.snapshot()
    assert (snap.month, snap.cap_micros, snap.remaining_micros) == ("2025-03", usd("$10"), usd("$10") - 2_000)
    assert await redis.hgetall(ledger.month_key()) == {b"spent": b"2000", b"reserved": b"0"}


async def test_reserve_is_idempotent_per_job_and_settle_refund_happen_once(redis, keys, clock):
    ledger = RedisBudgetLedger(redis, keys, cap_micros=CAP, clock=clock)

    first = await ledger.reserve("job-1", COST)
    again = await ledger.reserve("job-1", COST)  # a replayed Kafka record
    assert first and again and again.replayed and again.reservation_id == first.reservation_id
    assert await _totals(ledger) == (0, COST)

    assert await ledger.settle(first)
    assert not await ledger.settle(first)
    assert not await ledger.settle(again, actual_cost_micros=10 * COST)
    assert not await ledger.refund(first)  # a refund after settle changes nothing
    assert await _totals(ledger) == (COST, 0)

    # A replay after the job was paid for gets the settled reservation: do not pay again.
    paid = await ledger.reserve("job-1", COST)
    assert paid and paid.state == "settled" and paid.reservation_id == first.reservation_id
    assert await _totals(ledger) == (COST, 0)

    # After a refund (the provider failed) the job may try again: a fresh reservation.
    failed = await ledger.reserve("job-2", COST)
    assert failed and await ledger.refund(failed) and not await ledger.refund(failed)
    assert not await ledger.settle(failed)  # a settle after refund is a no-op too
    retry = await ledger.reserve("job-2", COST)
    assert retry and not retry.replayed and retry.reservation_id != failed.reservation_id
    assert await _totals(ledger) == (COST, COST)


async def test_the_cap_refuses_what_does_not_fit(redis, keys, clock):
    ledger = RedisBudgetLedger(redis, keys, cap_micros=2 * COST + COST // 2, clock=clock)

    first, second = await ledger.reserve("j1", COST), await ledger.reserve("j2", COST)
    assert first and second
    assert await ledger.reserve("j3", COST) is None
    assert await ledger.reserve("j3", COST // 2) is not None  # exactly fills the cap
    assert await ledger.reserve("j4", 1) is None
    assert await ledger.refund(first)
    assert await ledger.reserve("j4", COST) is not None
    assert await _totals(ledger) == (0, 2 * COST + COST // 2)

    gate = BudgetGate(ledger, cheapest_cost_micros=COST)
    request = c.GenerationRequested(job_id=c.new_job_id(), tenant="t", spec=c.ImageSpec(prompt="p"))
    assert await gate.allows(request) == (False, "monthly budget $0.00575 of $0.00575 spent")


async def test_a_new_utc_month_has_a_fresh_budget(redis, keys, clock):
    clock.now = datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC)
    ledger = RedisBudgetLedger(redis, keys, cap_micros=COST, clock=clock)
    january = await ledger.reserve("j1", COST)
    assert january and january.month == "2025-01"
    assert await ledger.reserve("j2", COST) is None

    clock.now += timedelta(seconds=1)
    february = await ledger.reserve("j2", COST)
    assert february and february.month == "2025-02"

    # January's reservation settles in February, against the month whose cap allowed it.
    assert await ledger.settle(january)
    assert await _totals(ledger, "2025-01") == (COST, 0)
    assert await _totals(ledger) == (0, COST)
    assert (await ledger.snapshot()).month == "2025-02"


async def test_abandoned_reservations_are_released(redis, keys, clock):
    ledger = RedisBudgetLedger(redis, keys, cap_micros=2 * COST, clock=clock, reservation_ttl_s=60)
    gate = BudgetGate(ledger, cheapest_cost_micros=COST)
    request = c.GenerationRequested(job_id=c.new_job_id(), tenant="t", spec=c.ImageSpec(prompt="p"))
    crashed = [await ledger.reserve("dead-1", COST), await ledger.reserve("dead-2", COST)]
    assert all(crashed)
    assert await ledger.reserve("live", COST) is None
    assert not (await gate.allows(request))[0]

    clock.now += timedelta(seconds=59)
    assert await _totals(ledger) == (0, 2 * COST)
    clock.now += timedelta(seconds=2)
    # The gate alone (no reserve running) sees the holds given back, so it cannot refuse forever.
    assert (await gate.allows(request))[0]
    assert await _totals(ledger) == (0, 0)
    live = await ledger.reserve("live", COST)
    assert live and await _totals(ledger) == (0, COST)

    # The dead replica's job is redelivered: its old hold expired, so it reserves afresh.
    replay = await ledger.reserve("dead-1", COST)
    assert replay and not replay.replayed and replay.reservation_id != crashed[0].reservation_id
    assert await _totals(ledger) == (0, 2 * COST)

    # The "dead" replica was only slow and settles after all: the money was spent, so it counts —
    # this is why reservation_ttl_s must exceed the longest paid call.
    assert await ledger.settle(crashed[0])
    assert await _totals(ledger) == (COST, 2 * COST)
    assert not await ledger.refund(crashed[0])
    # ...and it did not disturb the job's current reservation.
    assert (await ledger.reserve("dead-1", COST)).reservation_id == replay.reservation_id
    assert await ledger.refund(crashed[1]) and await _totals(ledger) == (COST, 2 * COST)


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
            ledger = RedisBudgetLedger(redis, keys, cap_micros=CAP, clock=Clock(now))
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
