"""The ``BudgetLedger`` contract: reserve against the cap, settle or refund once, per UTC month, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.common import contracts as c
from services.common.budget import usd
from services.common.ports import BudgetLedger
from services.router.budget_gate import BudgetGate
from tests.helpers import ManualClock

COST = usd("0.0023")
CAP = usd("0.10")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2025, 3, 14, 12, 0, tzinfo=UTC))


async def _totals(ledger: BudgetLedger, month: str | None = None) -> tuple[int, int]:
    snap = await ledger.snapshot(month)
    return snap.spent_micros, snap.reserved_micros


async def test_reserve_settle_refund_arithmetic(impl, clock):
    ledger = impl.budget_ledger(cap_micros=usd("$10"), clock=clock)

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


async def test_reserve_is_idempotent_per_job_and_settle_refund_happen_once(impl, clock):
    ledger = impl.budget_ledger(cap_micros=CAP, clock=clock)

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


async def test_the_cap_refuses_what_does_not_fit(impl, clock):
    ledger = impl.budget_ledger(cap_micros=2 * COST + COST // 2, clock=clock)

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


async def test_a_new_utc_month_has_a_fresh_budget(impl, clock):
    clock.now = datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC)
    ledger = impl.budget_ledger(cap_micros=COST, clock=clock)
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


async def test_abandoned_reservations_are_released(impl, clock):
    ledger = impl.budget_ledger(cap_micros=2 * COST, clock=clock, reservation_ttl_s=60)
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
    assert (await ledger.reserve("dead-1", COST)).state == "reserved"  # still held, not marked paid
    assert await ledger.refund(crashed[1]) and await _totals(ledger) == (COST, 2 * COST)


async def test_an_unsettled_hold_is_replayed_until_it_expires(impl, clock):
    ledger = impl.budget_ledger(cap_micros=CAP, clock=clock, reservation_ttl_s=60)
    held = await ledger.reserve("job-1", COST)
    assert held and held.expires_at == clock.now + timedelta(seconds=60)

    clock.now += timedelta(seconds=59)
    again = await ledger.reserve("job-1", 2 * COST)  # the job's hold, at its cost, not a second one
    assert again and again.replayed and (again.reservation_id, again.cost_micros) == (held.reservation_id, COST)
    clock.now += timedelta(seconds=1)  # exactly at expiry the hold is given back
    fresh = await ledger.reserve("job-1", COST)
    assert fresh and not fresh.replayed and fresh.reservation_id != held.reservation_id
    assert await _totals(ledger) == (0, COST)


async def test_a_zero_cap_refuses_everything(impl, clock):
    ledger = impl.budget_ledger(cap_micros=0, clock=clock)
    assert await ledger.reserve("j1", 1) is None
    assert await _totals(ledger) == (0, 0)
    assert ledger.cap_micros == 0


async def test_nonsense_amounts_are_refused(impl, clock):
    ledger = impl.budget_ledger(cap_micros=CAP, clock=clock)
    with pytest.raises(ValueError):
        await ledger.reserve("j1", 0)
    held = await ledger.reserve("j1", COST)
    with pytest.raises(ValueError):
        await ledger.settle(held, actual_cost_micros=-1)
    with pytest.raises(ValueError):
        impl.budget_ledger(cap_micros=-1, clock=clock)
    assert await _totals(ledger) == (0, COST)
