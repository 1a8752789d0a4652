"""Paid calls under ``Failover`` on the port fakes: a replay resumes its call and its reservation,
a finished job's call is cancelled, an unresumable call replayed is counted as paid."""

from __future__ import annotations

import asyncio

import pytest

from services.common import contracts as c
from services.common.budget import usd
from services.common.topics import Topics
from services.generator.handlers import GenerateHandler
from services.providers.failover import Candidate, Failover
from services.providers.port import JobAlreadyFinished
from tests.fakes import (
    FakeImageProvider,
    FakeResumableProvider,
    MemoryBreaker,
    MemoryBudgetLedger,
    MemoryJobStore,
    MemoryProviderCalls,
    MemorySpendJournal,
    MemoryTerminalGuard,
)

COST = usd("0.0023")
SPEC = c.ImageSpec(prompt="healing potion", width=64, height=64, seed=3)


def _failover(adapter, *, ledger=None, guard=None, calls=None) -> Failover:
    candidate = Candidate(name=adapter.name, adapter=adapter, breaker=MemoryBreaker(adapter.name), cost_micros=COST)
    return Failover([candidate], budget=ledger or MemoryBudgetLedger(cap_micros=usd("$1")),
                    calls=calls if calls is not None else MemoryProviderCalls(), guard=guard or MemoryTerminalGuard())


async def _kill_once_called(failover: Failover, job_id: str, called: list) -> None:
    """Run the job until its provider was called, then kill it there (a generator's SIGKILL)."""
    first = asyncio.create_task(failover.generate(job_id, SPEC))
    while not called:
        await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def _kill_mid_call(failover: Failover, adapter: FakeResumableProvider, job_id: str) -> None:
    adapter.hold = asyncio.Event()
    await _kill_once_called(failover, job_id, adapter.log)
    adapter.hold = None


async def test_a_replay_resumes_the_call_and_settles_its_one_reservation():
    adapter, journal = FakeResumableProvider("replicate"), MemorySpendJournal()
    ledger = MemoryBudgetLedger(cap_micros=usd("$1"), journal=journal)
    failover, job_id = _failover(adapter, ledger=ledger), c.new_job_id()
    await _kill_mid_call(failover, adapter, job_id)
    assert (await ledger.snapshot()).reserved_micros == COST  # the killed call's hold stays

    image, attempts = await failover.generate(job_id, SPEC)

    assert (image.provider, attempts) == ("replicate", 1)
    assert adapter.log == ["create:p1", "resume:p1"]
    snap = await ledger.snapshot()
    assert (snap.spent_micros, snap.reserved_micros) == (COST, 0)
    assert [(e.call, e.state) for e in journal.entries.values()] == [(f"{job_id}:replicate:1", "settled")]


async def test_a_replay_after_success_collects_the_output_without_paying_again():
    adapter = FakeResumableProvider("replicate")
    ledger = MemoryBudgetLedger(cap_micros=usd("$1"))
    failover, job_id = _failover(adapter, ledger=ledger), c.new_job_id()
    await failover.generate(job_id, SPEC)
    await failover.generate(job_id, SPEC)  # the generated record was never acknowledged: replayed

    assert adapter.log == ["create:p1", "resume:p1"]
    assert (await ledger.snapshot()).spent_micros == COST


async def test_a_replay_of_a_finished_job_cancels_and_the_handler_publishes_nothing():
    adapter, guard = FakeResumableProvider("replicate"), MemoryTerminalGuard()
    ledger = MemoryBudgetLedger(cap_micros=usd("$1"))
    failover = _failover(adapter, ledger=ledger, guard=guard)
    handler = GenerateHandler(failover=failover, topics=Topics("t"), jobs=MemoryJobStore(), guard=guard)
    routed = c.GenerationRouted.from_request(
        c.GenerationRequested(job_id=c.new_job_id(), tenant="studio", spec=SPEC),
        c.RouteDecision(path="fallback", reason="test", primary_depth=9, threshold=4))
    await _kill_mid_call(failover, adapter, routed.job_id)
    done = c.GenerationFailed(job_id=routed.job_id, tenant="studio", error=c.ErrorInfo(
        code="x", message="finished elsewhere", stage="generator", retryable=False))
    assert await guard.claim(done) == done

    outcome = await handler.handle(routed)

    assert list(outcome.outputs) == [] and outcome.on_acked is None
    assert adapter.log == ["create:p1", "resume:p1", "cancel:p1"]
    snap = await ledger.snapshot()
    assert (snap.spent_micros, snap.reserved_micros) == (0, 0)
    with pytest.raises(JobAlreadyFinished):  # and Failover itself says why
        await failover.generate(routed.job_id, SPEC)


async def test_an_unresumable_call_replayed_counts_the_interrupted_one_as_paid():
    hold = asyncio.Event()
    adapter = FakeImageProvider("siliconflow", during_call=hold.wait)
    ledger = MemoryBudgetLedger(cap_micros=usd("$1"))
    failover, job_id = _failover(adapter, ledger=ledger), c.new_job_id()
    await _kill_once_called(failover, job_id, adapter.calls)
    hold.set()

    await failover.generate(job_id, SPEC)

    assert len(adapter.calls) == 2  # it could not be resumed: two calls, both paid
    snap = await ledger.snapshot()
    assert (snap.spent_micros, snap.reserved_micros) == (2 * COST, 0)


async def test_without_a_call_record_a_resumable_adapter_is_called_plainly():
    adapter = FakeResumableProvider("replicate")
    candidate = Candidate(name="replicate", adapter=adapter, breaker=MemoryBreaker("replicate"), cost_micros=COST)
    await Failover([candidate], budget=MemoryBudgetLedger(cap_micros=usd("$1"))).generate(c.new_job_id(), SPEC)
    assert adapter.log == ["create:unrecorded-1"]
