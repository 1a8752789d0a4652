"""The ``KeyPool`` contract: round-robin, cooldowns (the later deadline wins), disables, ``NoKeyAvailable``."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest

from services.common.keypool import DEFAULT_COOLDOWN_S, ApiKey, NoKeyAvailable
from services.common.ports import KeyPool
from tests.helpers import ManualClock

T0 = 1_700_000_000.0


@pytest.fixture
def api_keys() -> list[ApiKey]:
    return [ApiKey("hf", f"hf_{name * 34}") for name in "abc"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def pool(impl, api_keys, clock) -> KeyPool:
    return impl.key_pool("hf", api_keys, clock=clock)


async def _picks(pool: KeyPool, n: int) -> list[str]:
    return [(await pool.pick()).key_id for _ in range(n)]


async def test_round_robin_over_three_keys(pool, api_keys):
    a, b, c = (k.key_id for k in api_keys)
    assert await _picks(pool, 7) == [a, b, c, a, b, c, a]


async def test_a_cooled_key_is_skipped_until_its_deadline(pool, api_keys, clock):
    a, b, c = (k.key_id for k in api_keys)
    deadline = await pool.cooldown(api_keys[1], 30, "429 from provider")
    assert deadline == T0 + 30

    assert set(await _picks(pool, 6)) == {a, c}
    clock.now = T0 + 29.9
    assert set(await _picks(pool, 6)) == {a, c}
    clock.now = T0 + 30
    assert set(await _picks(pool, 3)) == {a, b, c}


async def test_the_remaining_keys_share_the_load_evenly_while_one_cools(pool, api_keys):
    await pool.cooldown(api_keys[0], 60, "429")
    picks = Counter(await _picks(pool, 40))
    assert picks == {api_keys[1].key_id: 20, api_keys[2].key_id: 20}


async def test_a_shorter_second_cooldown_does_not_shorten_the_first(pool, api_keys, clock):
    b = api_keys[1].key_id
    assert await pool.cooldown(b, 120, "429 Retry-After: 120") == T0 + 120
    clock.now = T0 + 10
    assert await pool.cooldown(b, 5, "429 Retry-After: 5") == T0 + 120  # kept: the later deadline wins

    clock.now = T0 + 60
    assert b not in await _picks(pool, 6)
    # A longer one does extend it.
    assert await pool.cooldown(b, 100, "429 again") == T0 + 160
    clock.now = T0 + 150
    assert b not in await _picks(pool, 6)
    clock.now = T0 + 160
    assert b in await _picks(pool, 3)


async def test_no_retry_after_means_the_default_cooldown(pool, api_keys):
    assert await pool.cooldown(api_keys[0], None, "429 without Retry-After") == T0 + DEFAULT_COOLDOWN_S


async def test_cooldowns_are_clamped_to_at_least_a_second_and_at_most_a_day(pool, api_keys):
    assert await pool.cooldown(api_keys[0], 0, "429 Retry-After: 0") == T0 + 1
    assert await pool.cooldown(api_keys[1], float("inf"), "429") == T0 + DEFAULT_COOLDOWN_S
    assert await pool.cooldown(api_keys[2], 10 * 24 * 3600, "429") == T0 + 24 * 3600


async def test_all_cooling_says_when_the_first_key_comes_back(pool, api_keys, clock):
    await pool.cooldown(api_keys[0], 90, "429")
    await pool.cooldown(api_keys[1], 20, "429")
    await pool.cooldown(api_keys[2], 45, "429")
    clock.now = T0 + 5

    with pytest.raises(NoKeyAvailable) as raised:
        await pool.pick()

    assert raised.value.provider == "hf"
    assert raised.value.retry_after_s == pytest.approx(15)
    assert "cooling down" in str(raised.value)
    clock.now = T0 + 20
    assert (await pool.pick()).key_id == api_keys[1].key_id


async def test_a_disabled_key_is_never_picked_until_enabled(pool, api_keys, clock):
    a, b, c = (k.key_id for k in api_keys)
    await pool.disable(api_keys[0], "401 invalid token")

    clock.now = T0 + 10 * 24 * 3600  # no amount of waiting brings it back
    assert set(await _picks(pool, 10)) == {b, c}

    assert await pool.enable(a) is True
    assert await pool.enable(a) is False
    assert a in await _picks(pool, 3)


async def test_all_disabled_tells_how_to_re_enable(pool, api_keys):
    for key in api_keys:
        await pool.disable(key, "insufficient_quota")

    with pytest.raises(NoKeyAvailable) as raised:
        await pool.pick()

    assert raised.value.retry_after_s is None
    assert "every hf key is disabled" in str(raised.value)
    assert "forgeline keys enable" in str(raised.value)
    for key in api_keys:
        assert key.get_secret_value() not in str(raised.value)


async def test_disabled_and_cooling_keys_wait_for_the_cooling_one(pool, api_keys):
    await pool.disable(api_keys[0], "403")
    await pool.disable(api_keys[1], "403")
    await pool.cooldown(api_keys[2], 12, "429")

    with pytest.raises(NoKeyAvailable) as raised:
        await pool.pick()
    assert raised.value.retry_after_s == pytest.approx(12)


async def test_operator_can_name_a_key_by_id_or_masked_form_but_not_an_unknown_one(pool, api_keys):
    await pool.disable(api_keys[0], "403")
    assert await pool.enable(api_keys[0].masked) is True
    with pytest.raises(KeyError):
        await pool.enable("hf:00000000")
    with pytest.raises(KeyError):
        await pool.cooldown(ApiKey("hf", "hf_" + "z" * 34), 30, "429")


async def test_states_show_every_key_without_its_secret(pool, api_keys, clock):
    a, b, c = api_keys
    await pool.cooldown(b, 30, "429 rate limited")
    await pool.disable(c, "401 invalid token")
    await pool.record(a, ok=True)
    await pool.record(a, ok=True)
    await pool.record(a, ok=False)
    await pool.record(c.key_id, ok=False)

    states = {s.key_id: s for s in await pool.states()}

    assert [s.state for s in states.values()] == ["healthy", "cooling_down", "disabled"]
    assert (states[a.key_id].successes, states[a.key_id].failures) == (2, 1)
    assert states[a.key_id].cooldown_until is None and states[a.key_id].disabled_reason is None
    assert states[b.key_id].cooldown_until == datetime.fromtimestamp(T0 + 30, tz=UTC)
    assert states[b.key_id].cooldown_reason == "429 rate limited"
    assert states[c.key_id].disabled_reason == "401 invalid token"
    assert states[c.key_id].disabled_at == datetime.fromtimestamp(T0, tz=UTC)
    assert states[c.key_id].failures == 1
    assert states[b.key_id].masked == b.masked
    dumped = str([s.model_dump(mode="json") for s in states.values()])
    for key in api_keys:
        assert key.get_secret_value() not in dumped

    clock.now = T0 + 31  # the cooldown ran out
    assert [s.state for s in await pool.states()] == ["healthy", "healthy", "disabled"]


async def test_an_enabled_key_shows_no_disable_reason(pool, api_keys):
    await pool.disable(api_keys[0], "401")
    await pool.enable(api_keys[0].key_id)
    state = (await pool.states())[0]
    assert (state.state, state.disabled_reason, state.disabled_at) == ("healthy", None, None)


async def test_a_pool_without_keys_says_so(impl, clock):
    with pytest.raises(NoKeyAvailable) as raised:
        await impl.key_pool("hf", [], clock=clock).pick()
    assert raised.value.retry_after_s is None
    assert "no hf API keys are configured" in str(raised.value)


def test_keys_of_another_provider_are_refused(impl, clock):
    other = ApiKey("replicate", "r8_" + "z" * 37)
    with pytest.raises(ValueError) as raised:
        impl.key_pool("hf", [ApiKey("hf", "hf_" + "a" * 34), other], clock=clock)
    assert other.key_id in str(raised.value)
    assert other.get_secret_value() not in str(raised.value)


def test_a_key_listed_twice_is_one_key(impl, api_keys, clock):
    pool = impl.key_pool("hf", [*api_keys, api_keys[0]], clock=clock)
    assert pool.keys == tuple(api_keys)
    assert pool.provider == "hf"
