from __future__ import annotations

import math

import pytest

from services.common import contracts as c
from services.router.depth import RateWindow
from services.router.policy import (
    DeadlinePolicy,
    HysteresisPolicy,
    UnlimitedPaidCapacity,
    estimated_wait,
    policy_from_settings,
    route,
)
from services.router.settings import RouterSettings

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


# ---------------------------------------------------------------- deadline, rate, priority, budget

def _request(**fields) -> c.GenerationRequested:
    return c.GenerationRequested(job_id="0123456789abcdef", tenant="t", spec=c.ImageSpec(prompt="sword"), **fields)


def test_estimated_wait_is_depth_over_rate_zero_when_empty_inf_when_stalled():
    assert estimated_wait(20, 4.0) == 5.0
    assert estimated_wait(0, 0.0) == 0.0
    assert estimated_wait(3, 0.0) == math.inf


async def test_deadline_compares_estimated_wait_not_depth():
    policy = HysteresisPolicy(high=50, low=35)

    late = await route(_request(deadline_s=10), 30, policy, UnlimitedPaidCapacity(), rate=2.0)  # wait 15 s
    on_time = await route(_request(deadline_s=10), 80, policy, UnlimitedPaidCapacity(), rate=10.0)  # wait 8 s

    assert late.path == "fallback" and on_time.path == "primary"
    assert (late.estimated_wait_s, late.service_rate, late.deadline_s) == (15.0, 2.0, 10)
    assert "15.00" in late.reason and "10" in late.reason and "2.00/s" in late.reason
    assert policy.path == "primary", "a deadline decision must not move the depth hysteresis"


async def test_a_stalled_primary_misses_any_deadline():
    decision = await route(_request(deadline_s=60), 1, HysteresisPolicy(50, 35), UnlimitedPaidCapacity(), rate=0.0)

    assert decision.path == "fallback" and decision.estimated_wait_s == math.inf


async def test_high_priority_goes_to_fallback_at_half_the_deadline():
    policy = HysteresisPolicy(high=50, low=35)

    standard = await route(_request(deadline_s=10), 12, policy, UnlimitedPaidCapacity(), rate=2.0)  # wait 6 s
    high = await route(_request(deadline_s=10, priority="high"), 12, policy, UnlimitedPaidCapacity(), rate=2.0)

    assert standard.path == "primary" and high.path == "fallback"
    assert high.priority == "high" and "0.5" in high.reason


def test_high_priority_without_deadline_uses_half_thresholds_in_its_own_band():
    policy = HysteresisPolicy(high=50, low=35)

    high = [policy.decide(d, priority="high").path for d in (24, 25, 20, 18, 17)]
    standard = [policy.decide(d).path for d in (30, 49, 50)]

    assert high == ["primary", "fallback", "fallback", "fallback", "primary"]
    assert standard == ["primary", "primary", "fallback"]


async def test_without_deadline_the_hysteresis_is_kept_and_rate_reported():
    policy = HysteresisPolicy(high=50, low=35)
    paths = []
    for depth in (10, 50, 40, 34):
        decision = await route(_request(), depth, policy, UnlimitedPaidCapacity(), rate=5.0)
        paths.append(decision.path)

    assert paths == ["primary", "fallback", "fallback", "primary"]
    assert decision.estimated_wait_s == pytest.approx(34 / 5) and decision.deadline_s is None
    assert decision.placeholder is False


async def test_budget_refusal_keeps_a_deadline_job_on_primary():
    decision = await route(_request(deadline_s=2), 10, HysteresisPolicy(50, 35), _NoMoney(), rate=1.0)

    assert decision.path == "primary" and decision.placeholder is False
    assert "the monthly budget is spent" in decision.reason


async def test_refused_and_late_with_allow_placeholder_is_a_placeholder_on_fallback():
    request = _request(deadline_s=2, allow_placeholder=True)

    decision = await route(request, 10, HysteresisPolicy(50, 35), _NoMoney(), rate=1.0)

    assert decision.path == "fallback" and decision.placeholder is True
    assert "the monthly budget is spent" in decision.reason and "placeholder" in decision.reason


async def test_placeholder_only_when_the_primary_would_really_miss_the_deadline():
    # High priority asks for fallback at 0.5 × deadline, but 6 s of wait still meets a 10 s deadline.
    request = _request(deadline_s=10, priority="high", allow_placeholder=True)

    decision = await route(request, 12, HysteresisPolicy(50, 35), _NoMoney(), rate=2.0)

    assert decision.path == "primary" and decision.placeholder is False


async def test_allow_placeholder_without_deadline_never_makes_a_placeholder():
    decision = await route(_request(allow_placeholder=True), 80, HysteresisPolicy(50, 35), _NoMoney(), rate=1.0)

    assert decision.path == "primary" and decision.placeholder is False


def test_old_route_decisions_still_validate():
    old = {"path": "primary", "reason": "primary depth 1 < 50", "primary_depth": 1, "threshold": 50,
           "decided_at": "2026-01-01T00:00:00Z"}

    decision = c.RouteDecision.model_validate(old)

    assert decision.placeholder is False and decision.estimated_wait_s is None


def test_rate_window_measures_committed_growth_over_the_window():
    window = RateWindow(10.0)
    for second in range(0, 31):
        window.add(float(second), second * 3 if second < 20 else 60)  # 3/s, then stalled from t=20

    assert window.rate == 0.0  # the last 10 s served nothing

    fresh = RateWindow(10.0)
    assert fresh.rate == 0.0
    for second in range(0, 6):
        fresh.add(float(second), second * 4)
    assert fresh.rate == pytest.approx(4.0)


# ---------------------------------------------------------------- the deadline policy (the default)

def _deadline_policy(slots: int = 1) -> DeadlinePolicy:
    return DeadlinePolicy(service_s=40.0, min_rate=0.02, max_wait_s=300.0, max_depth=50, slots=slots)


async def test_a_job_waits_only_once_every_slot_is_taken():
    policy = _deadline_policy(slots=3)  # 120 s deadline: 80 s of wait at most

    waits = [(await route(_request(deadline_s=120), depth, policy, UnlimitedPaidCapacity(), rate=0.05))
             for depth in (2, 3, 6, 7)]

    assert [d.estimated_wait_s for d in waits] == [0.0, pytest.approx(20.0), pytest.approx(80.0),
                                                   pytest.approx(100.0)]
    assert [d.path for d in waits] == ["primary", "primary", "primary", "fallback"]
    assert "depth 7 on 3 slots" in waits[-1].reason and waits[2].threshold == 6


async def test_without_a_deadline_primary_until_the_wait_passes_max_wait():
    policy = _deadline_policy()

    paths = [(await route(_request(), depth, policy, UnlimitedPaidCapacity(), rate=0.05)).path
             for depth in (0, 15, 16)]  # waits 0, 300 and 320 s at 0.05/s

    assert paths == ["primary", "primary", "fallback"]


async def test_a_deadline_leaves_one_image_of_service_as_margin():
    policy = _deadline_policy()  # deadline 120 s - 40 s of service: 80 s of wait at most

    on_time = await route(_request(deadline_s=120), 4, policy, UnlimitedPaidCapacity(), rate=0.05)  # 80 s
    late = await route(_request(deadline_s=120), 5, policy, UnlimitedPaidCapacity(), rate=0.05)  # 100 s

    assert on_time.path == "primary" and late.path == "fallback"
    assert late.estimated_wait_s == pytest.approx(100.0) and late.deadline_s == 120
    assert "100.00" in late.reason and "deadline 120 s - 40 s" in late.reason


async def test_high_priority_gets_half_the_wait_a_deadline_leaves():
    policy = _deadline_policy()  # 200 s - 40 s: 160 s of wait for standard, half that for high priority

    standard = await route(_request(deadline_s=200), 7, policy, UnlimitedPaidCapacity(), rate=0.05)  # 140 s
    high = await route(_request(deadline_s=200, priority="high"), 7, policy, UnlimitedPaidCapacity(), rate=0.05)

    assert (standard.path, high.path) == ("primary", "fallback")
    assert "high priority: 0.5 × (deadline 200 s - 40 s to serve it)" in high.reason


async def test_a_window_without_completions_is_not_an_infinite_wait():
    # The old rule sends this job to the paid path: depth 1 over a measured 0/s is an infinite wait.
    old = await route(_request(deadline_s=600), 1, HysteresisPolicy(50, 35), UnlimitedPaidCapacity(), rate=0.0)
    new = await route(_request(deadline_s=600), 1, _deadline_policy(), UnlimitedPaidCapacity(), rate=0.0)

    assert old.path == "fallback"
    assert new.path == "primary" and new.estimated_wait_s == pytest.approx(50.0)  # 1 / min_rate
    assert new.service_rate == 0.0 and "measured 0.000/s" in new.reason


async def test_max_depth_is_a_ceiling_whatever_the_rate():
    decision = await route(_request(), 50, _deadline_policy(), UnlimitedPaidCapacity(), rate=100.0)  # 0.5 s wait

    assert decision.path == "fallback" and "depth reached 50" in decision.reason


async def test_deadline_policy_refused_and_late_gives_a_placeholder_only_when_allowed():
    strict = await route(_request(deadline_s=30), 10, _deadline_policy(), _NoMoney(), rate=0.05)
    lenient = await route(_request(deadline_s=30, allow_placeholder=True), 10, _deadline_policy(), _NoMoney(),
                          rate=0.05)

    assert (strict.path, strict.placeholder) == ("primary", False)
    assert "the monthly budget is spent" in strict.reason
    assert (lenient.path, lenient.placeholder) == ("fallback", True)


def test_the_router_runs_the_deadline_policy_unless_told_otherwise():
    default = policy_from_settings(RouterSettings(depth_high=40, max_wait_s=120, primary_min_rate=0.1,
                                                  primary_slots=3))
    old = policy_from_settings(RouterSettings(policy="hysteresis", depth_high=40, depth_low=30))

    assert default == DeadlinePolicy(service_s=40.0, min_rate=0.1, max_wait_s=120.0, max_depth=40, slots=3)
    assert isinstance(old, HysteresisPolicy) and (old.high, old.low) == (40, 30)
