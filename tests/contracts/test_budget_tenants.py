"""The ``BudgetLedger`` contract per tenant: each tenant's own cap, under the deployment's, in one atomic step.

The concurrency test runs workers against the same ledger at once (on the real adapter, a Lua
script in Redis): they race for the last dollars of their tenant's cap and of the deployment's.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from services.common import contracts as c
from services.common.budget import usd
from services.router.budget_gate import BudgetGate
from tests.fakes import MemoryTenantBudgets
from tests.helpers import ManualClock

COST = usd("0.0023")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2025, 3, 14, 12, 0, tzinfo=UTC))


def _request(tenant: str) -> c.GenerationRequested:
    return c.GenerationRequested(job_id=f"job-of-{tenant}", tenant=tenant, spec=c.ImageSpec(prompt="ruby ring"))


async def _spend(ledger, tenant: str) -> tuple[int, int]:
    spend = await ledger.tenant_snapshot(tenant)
    return spend.spent_micros, spend.reserved_micros


async def test_a_tenant_pays_up_to_its_own_cap_and_another_goes_on_paying(impl, clock):
    tenants = MemoryTenantBudgets({"studio-a": 2 * COST, "studio-b": 3 * COST})
    ledger = impl.budget_ledger(cap_micros=usd("$10"), clock=clock, tenants=tenants)

    a1 = await ledger.reserve("a1:replicate:1", COST, tenant="studio-a")
    a2 = await ledger.reserve("a2:replicate:1", COST, tenant="studio-a")
    assert a1 and a2 and a1.tenant == "studio-a"
    assert await ledger.reserve("a3:replicate:1", COST, tenant="studio-a") is None  # its cap, not the deployment's
    b = [await ledger.reserve(f"b{i}:replicate:1", COST, tenant="studio-b") for i in range(3)]
    assert all(b)
    assert await ledger.reserve("b9:replicate:1", COST, tenant="studio-b") is None

    assert await ledger.settle(a1, actual_cost_micros=2_000) and await ledger.refund(a2)
    assert await _spend(ledger, "studio-a") == (2_000, 0)
    assert await _spend(ledger, "studio-b") == (0, 3 * COST)
    snap = await ledger.snapshot()
    assert (snap.spent_micros, snap.reserved_micros) == (2_000, 3 * COST)  # the deployment counts both
    # The refund gave room back: one more call fits under 2 × COST.
    assert await ledger.reserve("a3:replicate:1", COST, tenant="studio-a")
    assert await ledger.reserve("a4:replicate:1", COST, tenant="studio-a") is None

    spend = await ledger.tenant_spend()
    assert sorted(spend) == ["studio-a", "studio-b"]
    assert (spend["studio-a"].cap_micros, spend["studio-a"].remaining_micros) == (2 * COST, 2 * COST - 2_000 - COST)


async def test_the_deployment_cap_still_binds_a_tenant_with_a_larger_budget(impl, clock):
    ledger = impl.budget_ledger(cap_micros=2 * COST, clock=clock,
                                tenants=MemoryTenantBudgets({"studio-a": usd("$5"), "free-rider": None}))
    assert await ledger.reserve("a1:p:1", COST, tenant="studio-a")
    assert await ledger.reserve("f1:p:1", COST, tenant="free-rider")  # registered, no cap of its own
    assert await ledger.reserve("a2:p:1", COST, tenant="studio-a") is None
    assert await ledger.reserve("x1:p:1", COST, tenant="never-registered") is None
    assert await _spend(ledger, "free-rider") == (0, COST)
    assert (await ledger.tenant_snapshot("free-rider")).remaining_micros is None


async def test_a_replay_gets_its_tenant_reservation_back_and_never_pays_twice(impl, clock):
    ledger = impl.budget_ledger(cap_micros=usd("$10"), clock=clock,
                                tenants=MemoryTenantBudgets({"studio-a": 2 * COST}))
    first = await ledger.reserve("job-1:replicate:1", COST, tenant="studio-a")
    again = await ledger.reserve("job-1:replicate:1", COST, tenant="studio-a")
    assert first and again and again.replayed and again.reservation_id == first.reservation_id
    assert await _spend(ledger, "studio-a") == (0, COST)
    assert await ledger.settle(first) and not await ledger.settle(again)
    paid = await ledger.reserve("job-1:replicate:1", COST, tenant="studio-a")
    assert paid and paid.state == "settled"
    assert await _spend(ledger, "studio-a") == (COST, 0)


async def test_an_abandoned_tenant_hold_is_given_back_to_that_tenant(impl, clock):
    ledger = impl.budget_ledger(cap_micros=usd("$10"), clock=clock, reservation_ttl_s=60,
                                tenants=MemoryTenantBudgets({"studio-a": COST}))
    crashed = await ledger.reserve("dead:p:1", COST, tenant="studio-a")
    assert crashed and await ledger.reserve("live:p:1", COST, tenant="studio-a") is None
    clock.now += timedelta(seconds=61)
    assert await _spend(ledger, "studio-a") == (0, 0)
    assert await ledger.reserve("live:p:1", COST, tenant="studio-a")
    # The slow holder settles after all: the money was spent, and it is the tenant's.
    assert await ledger.settle(crashed)
    assert await _spend(ledger, "studio-a") == (COST, COST)


async def test_the_month_and_the_tenant_read_together_see_the_holds_the_sweep_gave_back(impl, clock):
    """What the router's gate does: the month's totals and the tenant's, in one read, after one sweep."""
    ledger = impl.budget_ledger(cap_micros=usd("$10"), clock=clock, reservation_ttl_s=60,
                                tenants=MemoryTenantBudgets({"studio-a": 2 * COST}))
    assert await ledger.reserve("dead:p:1", COST, tenant="studio-a")
    assert await ledger.settle(await ledger.reserve("paid:p:1", COST, tenant="studio-a"))
    assert await ledger.reserve("other:p:1", COST, tenant="studio-b")
    clock.now += timedelta(seconds=61)  # both holds are abandoned now
    snap, spend = await ledger.snapshot_with_tenant("studio-a")
    assert (snap.spent_micros, snap.reserved_micros) == (COST, 0)
    assert (spend.tenant, spend.spent_micros, spend.reserved_micros, spend.remaining_micros) == \
        ("studio-a", COST, 0, COST)
    assert snap.month == ledger.current_month()


async def test_the_gate_refuses_a_tenant_whose_budget_is_spent(impl, clock):
    ledger = impl.budget_ledger(cap_micros=usd("$10"), clock=clock,
                                tenants=MemoryTenantBudgets({"studio-a": COST, "studio-b": COST}))
    gate = BudgetGate(ledger, cheapest_cost_micros=COST)
    assert (await gate.allows(_request("studio-a")))[0]
    assert await ledger.settle(await ledger.reserve("a1:p:1", COST, tenant="studio-a"))
    allowed, why = await gate.allows(_request("studio-a"))
    assert not allowed and "studio-a" in why and "$0.0023 of $0.0023" in why
    assert (await gate.allows(_request("studio-b")))[0]


async def test_a_lost_ledger_is_rebuilt_per_tenant_from_the_journal(impl, clock):
    journal = impl.spend_journal()
    ledger = impl.budget_ledger(cap_micros=usd("$10"), clock=clock, journal=journal,
                                tenants=MemoryTenantBudgets({"studio-a": 2 * COST}))
    assert await ledger.settle(await ledger.reserve("a1:p:1", COST, tenant="studio-a"))
    held = await ledger.reserve("a2:p:1", COST, tenant="studio-a")
    assert held

    await impl.lose_budget(ledger)

    assert await ledger.reserve("a3:p:1", COST, tenant="studio-a") is None  # 1 spent + 1 held = its cap
    assert await _spend(ledger, "studio-a") == (COST, COST)
    assert await ledger.refund(held)
    assert await _spend(ledger, "studio-a") == (COST, 0)


@pytest.mark.parametrize("workers", [6])
async def test_concurrent_workers_never_pass_a_tenant_cap(impl, clock, workers):
    """``workers`` per tenant reserve (and settle half of what they get) at once; no cap is ever passed."""
    caps = {"studio-a": 7 * COST, "studio-b": 11 * COST, "studio-c": 3 * COST + COST // 2}
    deployment_cap = 40 * COST
    ledger = impl.budget_ledger(cap_micros=deployment_cap, clock=clock, tenants=MemoryTenantBudgets(caps))
    granted: dict[str, list] = {tenant: [] for tenant in caps}

    async def worker(tenant: str, n: int) -> None:
        for call in range(10):
            reservation = await ledger.reserve(f"{tenant}-{n}-{call}:replicate:1", COST, tenant=tenant)
            if reservation is None:
                continue
            granted[tenant].append(reservation)
            if call % 2:
                await ledger.settle(reservation)
            await asyncio.sleep(0)

    await asyncio.gather(*(worker(tenant, n) for tenant in caps for n in range(workers)))

    for tenant, cap in caps.items():
        spend = await ledger.tenant_snapshot(tenant)
        assert spend.spent_micros + spend.reserved_micros <= cap, tenant
        assert len(granted[tenant]) == cap // COST, tenant  # every call that fits was granted, no more
    snap = await ledger.snapshot()
    assert snap.spent_micros + snap.reserved_micros == sum(len(g) for g in granted.values()) * COST <= deployment_cap
