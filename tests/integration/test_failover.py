"""Failover across keys and providers: real adapters against fake servers, state in the real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest

from services.common.breaker import RedisCircuitBreaker
from services.common.budget import RedisBudgetLedger, usd
from services.common.contracts import ImageSpec, new_job_id
from services.common.keypool import ApiKey, RedisKeyPool
from services.common.redis import KeySpace
from services.fakeproviders.base import FakeProvider, Knobs, fingerprint
from services.fakeproviders.openai_images import create_app
from services.fakeproviders.server import serve_fake
from services.providers.failover import Candidate, Failover, NoProviderAvailable
from services.providers.openai_images import (
    OpenAIImagesConfig,
    OpenAIImagesProvider,
)
from services.providers.port import PermanentProviderError
from tests.helpers import ManualClock

pytestmark = pytest.mark.integration

SPEC = ImageSpec(prompt="frost crystal longbow", width=64, height=64, seed=1)


async def _no_sleep(_seconds: float) -> None:
    return None


@dataclass
class Provider:
    """One fake provider server, with the candidate that calls it."""

    fake: FakeProvider
    candidate: Candidate
    keys: list[ApiKey]

    def calls_with(self, key: ApiKey) -> int:
        return sum(r.key == fingerprint(key.get_secret_value()) for r in self.fake.requests)


@pytest.fixture
async def providers(redis, connections) -> AsyncIterator:
    """``async with providers(name, keys=[...], **knobs) as p:`` — a fake server plus its candidate."""
    space = KeySpace(connections.redis.key_prefix)
    clock = ManualClock(2_000_000_000.0)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient())

        async def make(name: str, *, keys: tuple[str, ...] = (), cost: str = "0", **knobs) -> Provider:
            fake = FakeProvider(name, Knobs(**knobs))
            url = await stack.enter_async_context(serve_fake(create_app(fake)))
            api_keys = [ApiKey(name, secret) for secret in keys]
            candidate = Candidate(
                name=name,
                adapter=OpenAIImagesProvider(OpenAIImagesConfig(base_url=url, model="m", timeout_s=10), http),
                breaker=RedisCircuitBreaker(redis, space, name, threshold=2, cooldown_s=300, clock=clock),
                keys=RedisKeyPool(redis, space, name, api_keys, clock=clock) if api_keys else None,
                cost_micros=usd(cost),
            )
            return Provider(fake, candidate, api_keys)

        yield make, clock, space


async def test_a_429_storm_on_one_key_cools_it_and_jobs_complete_on_the_others(providers):
    make, clock, _ = providers
    provider = await make("openai-a", keys=("sk-test-key-one-aaaaaaaaaaaa", "sk-test-key-two-bbbbbbbbbbbb"))
    stormy, calm = provider.keys
    provider.fake.knobs.rejected_keys = {stormy.get_secret_value(): "429"}
    provider.fake.knobs.retry_after_s = 30
    failover = Failover([provider.candidate], sleep=_no_sleep)

    results = [await failover.generate(new_job_id(), SPEC) for _ in range(6)]

    assert all(image.provider == "openai-a" for image, _ in results)
    assert provider.calls_with(stormy) == 1, "no call may use the key before its Retry-After deadline"
    assert provider.calls_with(calm) == 6
    states = {s.key_id: s for s in await provider.candidate.keys.states()}
    assert states[stormy.key_id].state == "cooling_down"
    assert states[stormy.key_id].cooldown_until.timestamp() == pytest.approx(clock.now + 30)

    clock.now += 31  # the deadline passes: the key is back in the rotation
    provider.fake.knobs.rejected_keys = {}
    for _ in range(4):
        await failover.generate(new_job_id(), SPEC)
    assert provider.calls_with(stormy) == 3


async def test_a_401_disables_the_key_for_good_and_all_disabled_fails_with_a_clear_reason(providers):
    make, _, _ = providers
    provider = await make("openai-a", keys=("sk-test-revoked-cccccccccccc", "sk-test-good-dddddddddddddd"))
    revoked, good = provider.keys
    provider.fake.knobs.rejected_keys = {revoked.get_secret_value(): "401"}
    failover = Failover([provider.candidate], sleep=_no_sleep)

    for _ in range(5):
        await failover.generate(new_job_id(), SPEC)
    assert provider.calls_with(revoked) == 1
    assert {s.key_id: s.state for s in await provider.candidate.keys.states()}[revoked.key_id] == "disabled"

    provider.fake.knobs.rejected_keys[good.get_secret_value()] = "401"
    with pytest.raises(NoProviderAvailable) as caught:
        for _ in range(3):
            await failover.generate(new_job_id(), SPEC)
    assert "disabled" in str(caught.value) and "re-enable" in str(caught.value)
    assert caught.value.retry_after_s is None
    assert "sk-test" not in str(caught.value)


async def test_every_key_cooling_says_when_the_first_comes_back(providers):
    make, _, _ = providers
    provider = await make("openai-a", keys=("sk-test-only-eeeeeeeeeeeeee",), always_fail="429", retry_after_s=45)
    failover = Failover([provider.candidate], sleep=_no_sleep)

    with pytest.raises(NoProviderAvailable) as caught:
        await failover.generate(new_job_id(), SPEC)

    assert caught.value.retry_after_s == pytest.approx(45, abs=1)
    assert "back in 45 s" in str(caught.value)


async def test_a_failing_provider_opens_its_circuit_and_traffic_moves_on_until_it_is_restored(providers):
    make, clock, _ = providers
    down = await make("space-a", always_fail="503")
    up = await make("space-b")
    failover = Failover([down.candidate, up.candidate], sleep=_no_sleep)

    first = [await failover.generate(new_job_id(), SPEC) for _ in range(4)]
    calls_while_open = len(down.fake.requests)

    assert all(attempts == 2 for _, attempts in first[:2])  # a failed, b served
    assert calls_while_open == 2, "after two failures the circuit opens and space-a is skipped"
    assert all(attempts == 1 for _, attempts in first[2:])
    assert (await down.candidate.breaker.state()).state == "open"

    clock.now += 301  # the cooldown ends; the provider has recovered
    down.fake.knobs.always_fail = None
    await failover.generate(new_job_id(), SPEC)
    assert len(down.fake.requests) == calls_while_open + 1
    assert (await down.candidate.breaker.state()).state == "closed"


async def test_a_down_provider_and_a_throttled_key_still_leave_the_third_attempt(providers):
    make, _, _ = providers
    down = await make("space-a", always_fail="503")
    healthy = await make("space-b", keys=("sk-test-throttled-ffffffffff", "sk-test-fine-gggggggggggggg"))
    throttled, fine = healthy.keys
    healthy.fake.knobs.rejected_keys = {throttled.get_secret_value(): "429"}
    failover = Failover([down.candidate, healthy.candidate], sleep=_no_sleep)

    image, attempts = await failover.generate(new_job_id(), SPEC)

    assert (image.provider, attempts) == ("space-b", 3)  # a: 503; b: 429 on one key; b: the other key
    assert (healthy.calls_with(throttled), healthy.calls_with(fine)) == (1, 1)


async def test_a_permanent_error_fails_the_job_at_once_with_the_reason(providers):
    make, _, _ = providers
    rejecting = await make("openai-a", always_fail="400")
    spare = await make("openai-b")
    failover = Failover([rejecting.candidate, spare.candidate], sleep=_no_sleep)

    with pytest.raises(PermanentProviderError):
        await failover.generate(new_job_id(), SPEC)

    assert len(rejecting.fake.requests) == 1
    assert spare.fake.requests == [], "a permanent error is not retried elsewhere"


async def test_paid_calls_reserve_the_budget_settle_on_success_and_refund_on_failure(providers, redis):
    make, _, space = providers
    paid = await make("replicate-like", cost="0.0023")
    ledger = RedisBudgetLedger(redis, space, cap_micros=usd("0.005"))  # room for two images
    failover = Failover([paid.candidate], budget=ledger, sleep=_no_sleep)

    paid.fake.knobs.fail_next = ["503"]
    await failover.generate(new_job_id(), SPEC)  # attempt 1 fails (refunded), attempt 2 succeeds
    await failover.generate(new_job_id(), SPEC)
    with pytest.raises(NoProviderAvailable, match="would exceed the monthly budget"):
        await failover.generate(new_job_id(), SPEC)

    snapshot = await ledger.snapshot()
    assert (snapshot.spent_micros, snapshot.reserved_micros) == (usd("0.0046"), 0)
    assert len(paid.fake.requests) == 3  # the third job never reached the paid provider
