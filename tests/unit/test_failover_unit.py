"""``Failover``'s rules on the port fakes: which key, which provider, when to wait, what the budget holds."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from services.common.backoff import Backoff
from services.common.budget import usd
from services.common.contracts import ImageSpec, new_job_id
from services.common.errors import Retryable
from services.common.keypool import ApiKey
from services.providers.failover import Candidate, Failover, NoProviderAvailable
from services.providers.port import (
    KeyRejectedError,
    PermanentProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from tests.fakes import FAKE_PNG, FakeImageProvider, MemoryBreaker, MemoryBudgetLedger, MemoryKeyPool
from tests.helpers import ManualClock

SPEC = ImageSpec(prompt="frost crystal longbow", width=64, height=64, seed=1)
T0 = 2_000_000_000.0


class _Sleeps:
    """``Failover.sleep`` that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def sleeps() -> _Sleeps:
    return _Sleeps()


def _keys(provider: str, *names: str) -> list[ApiKey]:
    return [ApiKey(provider, f"sk-{name}-" + name[0] * 24) for name in names]


def _candidate(adapter: FakeImageProvider, clock: ManualClock, *, keys: list[ApiKey] | None = None, threshold: int = 5,
               cost: str = "0") -> Candidate:
    return Candidate(
        name=adapter.name, adapter=adapter,
        breaker=MemoryBreaker(adapter.name, threshold=threshold, cooldown_s=300, clock=clock),
        keys=MemoryKeyPool(adapter.name, keys, clock=clock) if keys is not None else None,
        cost_micros=usd(cost))


async def test_a_429_cools_the_key_and_the_job_goes_on_at_once_with_the_next(clock, sleeps):
    stormy, calm = _keys("openai-a", "stormy", "calm")
    adapter = FakeImageProvider("openai-a", rejects={
        stormy.get_secret_value(): RateLimitedError("slow down", provider="openai-a", retry_after_s=30)})
    candidate = _candidate(adapter, clock, keys=[stormy, calm])
    failover = Failover([candidate], sleep=sleeps)

    image, attempts = await failover.generate(new_job_id(), SPEC)

    assert (image.provider, image.data, attempts) == ("openai-a", FAKE_PNG, 2)
    assert adapter.calls == [stormy.get_secret_value(), calm.get_secret_value()]
    assert sleeps.waits == []  # another key needs no wait
    states = {s.key_id: s for s in await candidate.keys.states()}
    assert states[stormy.key_id].state == "cooling_down"
    assert states[stormy.key_id].cooldown_until == datetime.fromtimestamp(T0 + 30, UTC)
    assert states[stormy.key_id].cooldown_reason == "rate_limited"
    assert (await candidate.breaker.state()).consecutive_failures == 0  # a key's limit is not the provider's fault

    for _ in range(3):
        await failover.generate(new_job_id(), SPEC)
    assert adapter.calls.count(stormy.get_secret_value()) == 1, "no call before the Retry-After deadline"
    assert (await candidate.keys.states())[1].successes == 4

    clock.now = T0 + 30
    adapter.rejects.clear()
    for _ in range(2):
        await failover.generate(new_job_id(), SPEC)
    assert adapter.calls.count(stormy.get_secret_value()) == 2


async def test_a_401_disables_the_key_and_all_disabled_says_how_to_re_enable(clock, sleeps):
    revoked, good = _keys("openai-a", "revoked", "good")
    adapter = FakeImageProvider("openai-a", rejects={
        revoked.get_secret_value(): KeyRejectedError("invalid api key", provider="openai-a")})
    candidate = _candidate(adapter, clock, keys=[revoked, good])
    failover = Failover([candidate], sleep=sleeps)

    for _ in range(4):
        await failover.generate(new_job_id(), SPEC)

    assert adapter.calls.count(revoked.get_secret_value()) == 1
    state = (await candidate.keys.states())[0]
    assert (state.state, state.disabled_reason) == ("disabled", "key_rejected: invalid api key")

    adapter.rejects[good.get_secret_value()] = KeyRejectedError("quota used up", provider="openai-a")
    with pytest.raises(NoProviderAvailable) as caught:
        await failover.generate(new_job_id(), SPEC)
    assert caught.value.retry_after_s is None
    assert "every openai-a key is disabled" in str(caught.value) and "re-enable" in str(caught.value)
    assert "sk-" not in str(caught.value)
    assert sleeps.waits == []


async def test_5xx_backs_off_and_opens_the_breaker_after_the_threshold(clock, sleeps):
    adapter = FakeImageProvider("space-a", always=RetryableProviderError("HTTP 503", provider="space-a"))
    candidate = _candidate(adapter, clock, threshold=2)
    failover = Failover([candidate], attempts=3, backoff=Backoff(base_s=1.0, max_s=10.0), sleep=sleeps)

    with pytest.raises(NoProviderAvailable, match=r"space-a is down \(circuit open\)"):
        await failover.generate(new_job_id(), SPEC)

    assert len(adapter.calls) == 2, "the third attempt finds the circuit open and does not call"
    assert len(sleeps.waits) == 2
    assert 0.5 <= sleeps.waits[0] <= 1.0 and 1.0 <= sleeps.waits[1] <= 2.0  # base · 2^(n-1), jittered
    breaker = await candidate.breaker.state()
    assert (breaker.state, breaker.consecutive_failures) == ("open", 2)
    assert breaker.down_until == datetime.fromtimestamp(T0 + 300, UTC)

    clock.now = T0 + 300  # the cooldown is over: a trial call, and its success closes the breaker
    adapter.always = None
    image, attempts = await failover.generate(new_job_id(), SPEC)
    assert (image.provider, attempts) == ("space-a", 1)
    assert (await candidate.breaker.state()).state == "closed"


async def test_a_failed_provider_is_tried_last_and_the_next_one_serves(clock, sleeps):
    down = FakeImageProvider("space-a", always=RetryableProviderError("HTTP 502", provider="space-a"))
    up = FakeImageProvider("space-b")
    failover = Failover([_candidate(down, clock), _candidate(up, clock)], sleep=sleeps)

    image, attempts = await failover.generate(new_job_id(), SPEC)

    assert (image.provider, attempts) == ("space-b", 2)
    assert (len(down.calls), len(up.calls), len(sleeps.waits)) == (1, 1, 1)


async def test_a_timeout_is_a_retryable_failure_of_the_provider(clock, sleeps):
    async def hang() -> None:
        await asyncio.sleep(5)

    slow = FakeImageProvider("space-a", during_call=hang)
    candidate = Candidate(name="space-a", adapter=slow, breaker=MemoryBreaker("space-a", clock=clock), timeout_s=0.01)
    failover = Failover([candidate], attempts=1, sleep=sleeps)

    with pytest.raises(RetryableProviderError) as caught:
        await failover.generate(new_job_id(), SPEC)

    assert (caught.value.code, caught.value.provider) == ("timeout", "space-a")
    assert (await candidate.breaker.state()).consecutive_failures == 1


async def test_a_permanent_error_fails_the_job_at_once(clock, sleeps):
    rejecting = FakeImageProvider("openai-a", always=PermanentProviderError(
        "prompt violates the content policy", provider="openai-a", code="content_policy"))
    spare = FakeImageProvider("openai-b")
    first = _candidate(rejecting, clock)
    failover = Failover([first, _candidate(spare, clock)], sleep=sleeps)

    with pytest.raises(PermanentProviderError) as caught:
        await failover.generate(new_job_id(), SPEC)

    assert caught.value.code == "content_policy"
    assert (len(rejecting.calls), spare.calls, sleeps.waits) == (1, [], [])
    assert (await first.breaker.state()).consecutive_failures == 0  # a bad request says nothing of its health


async def test_a_paid_call_holds_its_cost_while_it_runs_is_refunded_on_failure_and_settled_on_success(clock, sleeps):
    ledger = MemoryBudgetLedger(cap_micros=usd("0.005"))  # room for two images
    held_during_calls: list[int] = []

    async def look() -> None:
        held_during_calls.append((await ledger.snapshot()).reserved_micros)

    paid = FakeImageProvider("replicate-like", during_call=look,
                             script=[RetryableProviderError("HTTP 503", provider="replicate-like")])
    failover = Failover([_candidate(paid, clock, cost="0.0023")], budget=ledger, sleep=sleeps)

    await failover.generate(new_job_id(), SPEC)  # attempt 1 fails (refunded), attempt 2 succeeds (settled)
    assert held_during_calls == [usd("0.0023"), usd("0.0023")]
    snapshot = await ledger.snapshot()
    assert (snapshot.spent_micros, snapshot.reserved_micros) == (usd("0.0023"), 0)

    await failover.generate(new_job_id(), SPEC)
    with pytest.raises(NoProviderAvailable, match="replicate-like would exceed the monthly budget"):
        await failover.generate(new_job_id(), SPEC)

    snapshot = await ledger.snapshot()
    assert (snapshot.spent_micros, snapshot.reserved_micros) == (usd("0.0046"), 0)
    assert len(paid.calls) == 3, "the third job never reached the paid provider"


async def test_a_free_provider_takes_the_job_when_the_paid_one_is_over_budget(clock, sleeps):
    ledger = MemoryBudgetLedger(cap_micros=usd("0.001"))
    paid, free = FakeImageProvider("paid"), FakeImageProvider("free")
    failover = Failover([_candidate(paid, clock, cost="0.0023"), _candidate(free, clock)], budget=ledger,
                        sleep=sleeps)

    image, attempts = await failover.generate(new_job_id(), SPEC)

    assert (image.provider, attempts, paid.calls) == ("free", 1, [])
    assert (await ledger.snapshot()).spent_micros == 0


async def test_no_provider_available_says_when_the_first_key_comes_back(clock, sleeps):
    a_keys, b_keys = _keys("space-a", "one", "two"), _keys("space-b", "three")
    a, b = FakeImageProvider("space-a"), FakeImageProvider("space-b")
    first, second = _candidate(a, clock, keys=a_keys), _candidate(b, clock, keys=b_keys)
    await first.keys.cooldown(a_keys[0], 90, "429")
    await first.keys.cooldown(a_keys[1], 45, "429")
    await second.keys.cooldown(b_keys[0], 20, "429")
    failover = Failover([first, second], sleep=sleeps)

    with pytest.raises(NoProviderAvailable) as caught:
        await failover.generate(new_job_id(), SPEC)

    assert caught.value.retry_after_s == pytest.approx(20)
    assert "back in 20 s" in str(caught.value)
    assert "every space-a key is cooling down" in str(caught.value)
    assert isinstance(caught.value, Retryable) and caught.value.code == "no_provider_available"
    assert (a.calls, b.calls) == ([], [])


async def test_run_reports_who_served_by_key_fingerprint(clock, sleeps):
    [key] = _keys("vlm", "judge")
    failover = Failover([_candidate(FakeImageProvider("vlm"), clock, keys=[key])], sleep=sleeps)

    async def call(candidate: Candidate, token: str | None) -> str:
        return f"{candidate.name} answered"

    served = await failover.run(new_job_id(), call)

    assert (served.value, served.attempts, served.provider, served.key_id) == ("vlm answered", 1, "vlm", key.key_id)


class _ClockSleeps(_Sleeps):
    """Waits that move the test's clock, so cooled keys come back while the job waits."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        await super().__call__(seconds)
        self.clock.now += seconds


async def _one_key_cooling(clock: ManualClock, cooling_s: float) -> tuple[ApiKey, FakeImageProvider, Candidate]:
    [key] = _keys("replicate", "only")
    adapter = FakeImageProvider("replicate")
    candidate = _candidate(adapter, clock, keys=[key])
    await candidate.keys.cooldown(key, cooling_s, "429")
    return key, adapter, candidate


async def test_a_job_waits_for_a_key_that_comes_back_soon_instead_of_failing(clock):
    key, adapter, candidate = await _one_key_cooling(clock, 1.5)
    sleeps = _ClockSleeps(clock)
    failover = Failover([candidate], sleep=sleeps, key_wait_s=10)

    image, attempts = await failover.generate(new_job_id(), SPEC)

    assert (image.provider, attempts, adapter.calls) == ("replicate", 1, [key.get_secret_value()])
    assert len(sleeps.waits) == 1 and 1.5 <= sleeps.waits[0] <= 1.5 + 0.1 + 1.5 / 4


async def test_a_job_fails_at_once_when_the_keys_come_back_later_than_it_may_wait(clock):
    _, adapter, candidate = await _one_key_cooling(clock, 30)
    sleeps = _ClockSleeps(clock)

    with pytest.raises(NoProviderAvailable, match="back in 30 s"):
        await Failover([candidate], sleep=sleeps, key_wait_s=10).generate(new_job_id(), SPEC)
    assert (sleeps.waits, adapter.calls) == ([], [])


async def test_the_wait_for_keys_is_bounded_over_the_whole_job(clock):
    """A key that cools again on every call (a storm) does not keep the job waiting for ever."""
    [key] = _keys("replicate", "only")
    adapter = FakeImageProvider("replicate", rejects={
        key.get_secret_value(): RateLimitedError("slow down", provider="replicate", retry_after_s=4)})
    candidate = _candidate(adapter, clock, keys=[key])
    sleeps = _ClockSleeps(clock)

    with pytest.raises(NoProviderAvailable):
        await Failover([candidate], sleep=sleeps, attempts=10, key_wait_s=10).generate(new_job_id(), SPEC)
    assert sum(sleeps.waits) <= 10 and len(sleeps.waits) >= 1
