"""The ``SpendJournal`` contract: one entry per reservation, the latest state wins, read per month."""

from __future__ import annotations

import pytest

from services.common.spend_journal import SpendEntry, SpendJournalUnavailable

BACKENDS = ("memory", "s3")


def entry(rid: str, state: str = "held", *, month: str = "2025-03", cost: int = 2300) -> SpendEntry:
    return SpendEntry(reservation_id=rid, call=f"job-{rid}:replicate:1", month=month, cost_micros=cost,
                      state=state, expires_ms=1_741_000_000_000)


async def test_entries_are_read_back_by_month_with_the_latest_state(impl):
    journal = impl.spend_journal()
    await journal.write(entry("a"))
    await journal.write(entry("b"))
    await journal.write(entry("a", "settled", cost=2000))
    await journal.write(entry("c", month="2025-04"))

    march = sorted(await journal.month("2025-03"), key=lambda e: e.reservation_id)
    assert march == [entry("a", "settled", cost=2000), entry("b")]
    assert await journal.month("2025-04") == [entry("c", month="2025-04")]
    assert await journal.month("2025-05") == []


async def test_an_unreachable_journal_says_so(impl):
    journal = impl.broken_journal()
    with pytest.raises(SpendJournalUnavailable):
        await journal.write(entry("a"))
    with pytest.raises(SpendJournalUnavailable):
        await journal.month("2025-03")
