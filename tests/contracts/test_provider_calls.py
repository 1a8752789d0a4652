"""The ``ProviderCalls`` contract: a job's paid calls per provider, numbered; one creator per call."""

from __future__ import annotations

import asyncio


async def test_a_job_starts_at_call_one_with_no_id(impl):
    calls = impl.provider_calls()
    current = await calls.current("job-1", "replicate")
    assert (current.seq, current.call_id) == (1, None)


async def test_a_recorded_call_is_found_per_job_and_provider(impl):
    calls = impl.provider_calls()
    assert await calls.record("job-1", "replicate", 1, "pred-abc")

    found = await calls.current("job-1", "replicate")
    assert (found.seq, found.call_id) == (1, "pred-abc")
    assert (await calls.current("job-1", "other")).call_id is None
    assert (await calls.current("job-2", "replicate")).call_id is None


async def test_close_moves_to_the_next_call_once_and_stale_records_are_refused(impl):
    calls = impl.provider_calls()
    await calls.record("job-1", "replicate", 1, "pred-1")
    await calls.close("job-1", "replicate", 1)
    await calls.close("job-1", "replicate", 1)  # a replay closing the same call again: no second step

    current = await calls.current("job-1", "replicate")
    assert (current.seq, current.call_id) == (2, None)
    assert not await calls.record("job-1", "replicate", 1, "pred-late")  # call 1 is over
    assert await calls.record("job-1", "replicate", 2, "pred-2")
    assert (await calls.current("job-1", "replicate")).call_id == "pred-2"


async def test_one_claim_per_call_until_it_expires(impl):
    calls = impl.provider_calls()
    assert await calls.claim("job-1", "replicate", 1, ttl_s=0.3)
    assert not await calls.claim("job-1", "replicate", 1, ttl_s=0.3)  # a second replay, concurrently
    assert await calls.claim("job-1", "replicate", 2, ttl_s=0.3)  # another call of the job
    assert await calls.claim("job-2", "replicate", 1, ttl_s=0.3)

    await asyncio.sleep(0.4)  # the holder died mid-create: its claim lapses
    assert await calls.claim("job-1", "replicate", 1, ttl_s=0.3)


async def test_concurrent_claims_have_one_winner(impl):
    calls = impl.provider_calls()
    won = await asyncio.gather(*(calls.claim("job-9", "replicate", 1, ttl_s=5) for _ in range(8)))
    assert sorted(won) == [False] * 7 + [True]
