from __future__ import annotations

from services.common import contracts as c
from services.router.handlers import HysteresisPolicy, UnlimitedPaidCapacity, route

REQUEST = c.GenerationRequested(job_id="0123456789abcdef", tenant="t", spec=c.ImageSpec(prompt="sword"))


class _NoMoney:
    async def allows(self, request):
        return False, "the monthly budget is spent"


def test_primary_until_the_high_threshold_then_fallback():
    policy = HysteresisPolicy(high=50, low=35)

    paths = [policy.decide(depth).path for depth in (0, 49, 50, 51)]

    assert paths == ["primary", "primary", "fallback", "fallback"]


def test_hysteresis_stays_on_fallback_until_below_low():
    policy = HysteresisPolicy(high=50, low=35)
    policy.decide(60)

    paths = [policy.decide(depth).path for depth in (49, 40, 35, 34, 40, 49, 50)]

    assert paths == ["fallback", "fallback", "fallback", "primary", "primary", "primary", "fallback"]


def test_decision_records_depth_threshold_and_reason():
    decision = HysteresisPolicy(high=50, low=35).decide(61)

    assert (decision.path, decision.primary_depth, decision.threshold) == ("fallback", 61, 35)
    assert "61" in decision.reason and "50" in decision.reason


async def test_paid_capacity_can_keep_a_job_on_primary():
    decision = await route(REQUEST, 80, HysteresisPolicy(high=50, low=35), _NoMoney())

    assert decision.path == "primary"
    assert "the monthly budget is spent" in decision.reason


async def test_unlimited_paid_capacity_allows_fallback():
    decision = await route(REQUEST, 80, HysteresisPolicy(high=50, low=35), UnlimitedPaidCapacity())

    assert decision.path == "fallback"
