"""The ``BudgetLedger`` contract with a ``SpendJournal``: a lost ledger is rebuilt, never overspent.

"Lost" is what a Redis restart without its data does to the real ledger (its keys are deleted),
and ``forget()`` to the fake's dicts; the journal is the fake's dict or real S3 objects.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from services.common.budget import usd

COST = usd("0.0023")
CAP = 4 * COST


def clock() -> datetime:
    return datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


async def _totals(ledger) -> tuple[int, int]:
    snap = await ledger.snapshot()
    return snap.spent_micros, snap.reserved_micros


async def test_a_lost_ledger_is_rebuilt_from_the_journal_before_any_reservation(impl):
    journal = impl.spend_journal()
    ledger = impl.budget_ledger(cap_micros=CAP, clock=clock, journal=journal)
    settled = [await ledger.reserve(f"job-{i}:replicate:1", COST) for i in range(3)]
    for reservation in settled[:2]:
        assert await ledger.settle(reservation)
    assert await ledger.refund(settled[2])
    in_flight = await ledger.reserve("job-3:replicate:1", COST)  # its holder is mid-call when Redis goes
    assert in_flight is not None and await _totals(ledger) == (2 * COST, COST)

    await impl.lose_budget(ledger)

    # Without the journal the month would look empty and grant four more calls: it grants one.
    assert await _totals(ledger) == (2 * COST, COST)
    assert await ledger.reserve("job-4:replicate:1", COST) is not None
    assert await ledger.reserve("job-5:replicate:1", COST) is None
    # The in-flight call finishes after the restart: settled once, against its original hold.
    assert await ledger.settle(in_flight)
    assert not await ledger.settle(in_flight)
    assert await _totals(ledger) == (3 * COST, COST)


async def test_a_settle_that_lands_before_the_rebuild_is_counted_once(impl):
    journal = impl.spend_journal()
    ledger = impl.budget_ledger(cap_micros=CAP, clock=clock, journal=journal)
    held = await ledger.reserve("job-1:replicate:1", COST)
    await impl.lose_budget(ledger)

    assert await ledger.settle(held)  # the first thing Redis hears after its restart
    assert await _totals(ledger) == (COST, 0)
    assert [e.state for e in await journal.month("2025-03")] == ["settled"]


async def test_an_unreadable_journal_refuses_paid_reservations(impl):
    ledger = impl.budget_ledger(cap_micros=CAP, clock=clock, journal=impl.broken_journal())

    assert await ledger.reserve("job-1:replicate:1", COST) is None
    snap = await ledger.snapshot()
    assert (snap.spent_micros, snap.remaining_micros) == (0, 0)  # nothing may be sent to the paid path


@pytest.mark.parametrize("month_key_lost", [False, True])
async def test_every_granted_reservation_is_on_record_before_the_call(impl, month_key_lost):
    journal = impl.spend_journal()
    ledger = impl.budget_ledger(cap_micros=CAP, clock=clock, journal=journal)
    if month_key_lost:
        await impl.lose_budget(ledger)
    reservation = await ledger.reserve("job-1:replicate:1", COST)
    [entry] = await journal.month("2025-03")
    assert (entry.reservation_id, entry.call, entry.state, entry.cost_micros) == (
        reservation.reservation_id, "job-1:replicate:1", "held", COST)


class _CountedJournal:
    """A journal whose month takes a while to read, counting the reads."""

    def __init__(self, journal) -> None:
        self._journal = journal
        self.reads = 0

    async def write(self, entry) -> None:
        await self._journal.write(entry)

    async def month(self, month: str):
        self.reads += 1
        await asyncio.sleep(0.05)
        return await self._journal.month(month)


async def test_a_lost_month_is_read_from_the_journal_once_however_many_ask_at_once(impl):
    journal = _CountedJournal(impl.spend_journal())
    ledger = impl.budget_ledger(cap_micros=CAP, clock=clock, journal=journal)
    assert await ledger.settle(await ledger.reserve("job-1:replicate:1", COST))
    await impl.lose_budget(ledger)
    journal.reads = 0

    # A month's start, or a Redis restart: every job in flight finds the totals unseeded at once.
    totals = await asyncio.gather(*(_totals(ledger) for _ in range(20)),
                                  *(ledger.reserve(f"job-{i}:replicate:1", COST) for i in range(2, 4)))
    assert all(spent == COST for spent, _ in totals[:20])  # the reservations may land before some reads
    assert all(r is not None for r in totals[20:])
    assert journal.reads == 1
