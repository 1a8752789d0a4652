"""Budget money arithmetic, month keys and the router gate, without Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common import contracts as c
from services.common.budget import (
    BudgetSnapshot,
    RedisBudgetLedger,
    TenantSpend,
    format_usd,
    month_of,
    usd,
)
from services.common.redis import KeySpace
from services.router.budget_gate import BudgetGate
from tests.helpers import ManualClock


@pytest.mark.parametrize(("text", "micros"), [
    ("0.0023", 2_300), ("$10", 10_000_000), ("$10.00", 10_000_000), (" 1,000.5 ", 1_000_500_000),
    ("0.000001", 1), ("-$0.50", -500_000), (Decimal("0.0023"), 2_300), (3, 3_000_000), (0.0023, 2_300),
    ("0", 0),
])
def test_usd_parses_exactly_to_micro_dollars(text, micros):
    assert usd(text) == micros


@pytest.mark.parametrize("bad", ["0.0000001", "ten", "", "$", "NaN", "inf", 0.1 + 0.2])
def test_usd_refuses_what_is_not_a_whole_number_of_micro_dollars(bad):
    with pytest.raises(ValueError):
        usd(bad)


def test_usd_refuses_bools():
    with pytest.raises(TypeError):
        usd(True)


@pytest.mark.parametrize(("micros", "text"), [
    (2_300, "$0.0023"), (10_000_000, "$10.00"), (1, "$0.000001"), (0, "$0.00"), (-500_000, "-$0.50"),
    (1_230_000, "$1.23"), (1_234_500, "$1.2345"), (100_000, "$0.10"),
])
def test_format_usd(micros, text):
    assert format_usd(micros) == text


@pytest.mark.parametrize("micros", [0, 1, 2_300, 99_999_999, 10_000_000, 123_456_789])
def test_format_and_parse_round_trip(micros):
    assert usd(format_usd(micros)) == micros


def test_month_is_the_utc_calendar_month():
    assert month_of(datetime(2025, 1, 31, 23, 59, 59, 999_999, tzinfo=UTC)) == "2025-01"
    assert month_of(datetime(2025, 2, 1, 0, 0, tzinfo=UTC)) == "2025-02"
    assert month_of(datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)) == "2024-12"
    assert month_of(datetime(2025, 1, 1, tzinfo=UTC)) == "2025-01"
    # Local evening of Jan 31 in New York is already February in UTC; Tokyo's Feb 1 morning is still January.
    assert month_of(datetime(2025, 1, 31, 20, 0, tzinfo=timezone(timedelta(hours=-5)))) == "2025-02"
    assert month_of(datetime(2025, 2, 1, 8, 0, tzinfo=timezone(timedelta(hours=9)))) == "2025-01"


def test_month_of_refuses_naive_datetimes():
    with pytest.raises(ValueError):
        month_of(datetime(2025, 1, 31, 23, 0))


def test_ledger_month_key_rolls_over_at_the_utc_boundary():
    clock = ManualClock(datetime(2025, 1, 31, 23, 59, 59, 999_000, tzinfo=UTC))
    # Redis() does not connect until used; register_script only hashes the source.
    ledger = RedisBudgetLedger(Redis(), KeySpace("p:"), cap_micros=usd("$10"), clock=clock)
    assert ledger.month_key() == "p:{budget}:2025-01"
    clock.now += timedelta(milliseconds=1)
    assert ledger.month_key() == "p:{budget}:2025-02"
    clock.now = datetime(2025, 12, 31, 23, 59, tzinfo=UTC)
    assert ledger.current_month() == "2025-12"
    clock.now += timedelta(minutes=1)
    assert ledger.current_month() == "2026-01"
    assert ledger.month_key("2024-07") == "p:{budget}:2024-07"


def test_ledger_rejects_nonsense_amounts():
    with pytest.raises(ValueError):
        RedisBudgetLedger(Redis(), KeySpace("p:"), cap_micros=-1)


def test_snapshot_remaining_never_negative():
    snap = BudgetSnapshot(month="2025-01", cap_micros=100, spent_micros=90, reserved_micros=20)
    assert snap.remaining_micros == 0
    assert snap.as_dict()["remaining"] == "$0.00"
    assert BudgetSnapshot("2025-01", 10_000_000, 2_300, 4_600).as_dict() == {
        "month": "2025-01", "cap_micros": 10_000_000, "spent_micros": 2_300, "reserved_micros": 4_600,
        "remaining_micros": 9_993_100, "cap": "$10.00", "spent": "$0.0023", "reserved": "$0.0046",
        "remaining": "$9.9931"}


class _FakeLedger:
    def __init__(self, snap: BudgetSnapshot | Exception) -> None:
        self.snap = snap

    async def snapshot_with_tenant(self, tenant: str) -> tuple[BudgetSnapshot, TenantSpend]:
        if isinstance(self.snap, Exception):
            raise self.snap
        return self.snap, TenantSpend(tenant, 0, 0, None)  # a tenant without a budget of its own


def _request() -> c.GenerationRequested:
    return c.GenerationRequested(job_id=c.new_job_id(), tenant="t", spec=c.ImageSpec(prompt="p"))


async def test_gate_allows_while_one_more_image_fits():
    gate = BudgetGate(_FakeLedger(BudgetSnapshot("2025-01", 10_000_000, 9_990_000, 7_700)),  # type: ignore[arg-type]
                      cheapest_cost_micros=2_300)
    allowed, why = await gate.allows(_request())
    assert allowed and "$0.0023 of $10.00 left" in why


async def test_gate_refuses_when_the_cheapest_image_no_longer_fits():
    gate = BudgetGate(_FakeLedger(BudgetSnapshot("2025-01", 10_000_000, 9_990_000, 8_000)),  # type: ignore[arg-type]
                      cheapest_cost_micros=2_300)
    assert await gate.allows(_request()) == (False, "monthly budget $9.998 of $10.00 spent")


async def test_gate_refuses_when_the_ledger_is_unreachable():
    gate = BudgetGate(_FakeLedger(RedisConnectionError("down")), cheapest_cost_micros=2_300)  # type: ignore[arg-type]
    allowed, why = await gate.allows(_request())
    assert not allowed and "unavailable" in why
