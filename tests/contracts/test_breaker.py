"""The ``Breaker`` contract: open after ``threshold`` failures in a row, a trial after the cooldown."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.helpers import ManualClock


async def test_opens_after_threshold_failures_and_closes_after_a_successful_trial(impl):
    clock = ManualClock(1_000_000.0)
    breaker = impl.breaker("hf-space-a", threshold=3, cooldown_s=300, clock=clock)

    assert [await breaker.failure() for _ in range(2)] == [None, None]
    assert await breaker.allows()
    assert await breaker.failure() == clock.now + 300
    assert not await breaker.allows()
    assert (await breaker.state()).state == "open"

    clock.now += 301  # cooldown over: one trial call is allowed
    assert await breaker.allows()
    assert (await breaker.state()).state == "half_open"
    await breaker.success()
    assert (await breaker.state()).state == "closed"


async def test_a_failed_trial_opens_it_again_at_once(impl):
    clock = ManualClock(1_000_000.0)
    breaker = impl.breaker("hf-space-a", threshold=2, cooldown_s=60, clock=clock)
    await breaker.failure()
    await breaker.failure()
    clock.now += 61

    assert await breaker.failure() == clock.now + 60
    assert not await breaker.allows()


async def test_a_success_resets_the_count_of_failures_in_a_row(impl):
    clock = ManualClock(1_000_000.0)
    breaker = impl.breaker("hf-space-a", threshold=3, cooldown_s=60, clock=clock)
    await breaker.failure()
    await breaker.failure()
    await breaker.success()

    assert [await breaker.failure() for _ in range(2)] == [None, None]
    assert await breaker.allows()
    assert await breaker.failure() == clock.now + 60


async def test_state_reports_failures_and_when_it_comes_back(impl):
    clock = ManualClock(1_000_000.0)
    breaker = impl.breaker("hf-space-a", threshold=2, cooldown_s=30, clock=clock)

    closed = await breaker.state()
    assert (closed.provider, closed.state, closed.consecutive_failures, closed.down_until) == (
        "hf-space-a", "closed", 0, None)
    await breaker.failure()
    await breaker.failure()
    opened = await breaker.state()
    assert (opened.state, opened.consecutive_failures) == ("open", 2)
    assert opened.down_until == datetime.fromtimestamp(clock.now + 30, UTC)
    assert breaker.provider == "hf-space-a"
