"""A replay never pays twice: the Replicate adapter under ``Failover``, against the fake Replicate on
loopback, with the call record, terminal guard and budget ledger in the real Redis and the spend
journal in the real S3.

A generator killed mid-wait is simulated by cancelling its task once the prediction was created
(as a SIGKILL would, nothing runs after it: no refund, no cancel); the replay is a second
``Failover.generate`` with the same job id, as another generator would run it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from services.common import contracts as c
from services.common.breaker import RedisCircuitBreaker
from services.common.budget import RedisBudgetLedger, usd
from services.common.jobs import RedisTerminalGuard
from services.common.keypool import ApiKey, RedisKeyPool
from services.common.provider_calls import RedisProviderCalls
from services.common.redis import KeySpace
from services.common.spend_journal import S3SpendJournal, journal_namespace
from services.fakeproviders.base import FakeProvider, Knobs
from services.fakeproviders.replicate import create_app
from services.fakeproviders.server import serve_fake
from services.providers.failover import Candidate, Failover
from services.providers.port import JobAlreadyFinished
from services.providers.replicate import ReplicateConfig, ReplicateProvider

pytestmark = pytest.mark.integration

COST = usd("0.0023")
SPEC = c.ImageSpec(prompt="flaming obsidian greatsword", width=256, height=256, seed=7)
TOKEN = "r8_fake-test-token-not-real-1234"


@dataclass
class Paid:
    fake: FakeProvider
    failover: Failover
    calls: RedisProviderCalls
    guard: RedisTerminalGuard
    ledger: RedisBudgetLedger
    journal: S3SpendJournal

    def requests(self, method: str, suffix: str = "") -> list[str]:
        return [r.path for r in self.fake.requests if r.method == method and r.path.endswith(suffix)]

    def creates(self) -> list[str]:
        return self.requests("POST", "/predictions")

    async def created(self, job_id: str) -> str:
        """The prediction id the first attempt recorded, once it did."""
        for _ in range(500):
            if (current := await self.calls.current(job_id, "replicate")).call_id:
                return current.call_id
            await asyncio.sleep(0.01)
        raise AssertionError(f"no prediction was recorded for {job_id}; the fake saw {self.fake.requests}")


@pytest.fixture
async def paid(redis, connections) -> AsyncIterator[Paid]:
    # 40 polls of 50 ms: the prediction runs ~2 s, long enough to kill the first attempt mid-wait.
    fake = FakeProvider("replicate", Knobs(slow_start_polls=40))
    keys = KeySpace(connections.redis.key_prefix)
    journal = S3SpendJournal(connections.s3, prefix=f"tests/{journal_namespace(keys.prefix)}/billing")
    ledger = RedisBudgetLedger(redis, keys, cap_micros=usd("$1"), journal=journal)
    calls, guard = RedisProviderCalls(redis, keys), RedisTerminalGuard(redis, keys)
    async with serve_fake(create_app(fake)) as url, httpx.AsyncClient() as http:
        adapter = ReplicateProvider(ReplicateConfig(base_url=url, model="black-forest-labs/flux-schnell",
                                                    poll_interval_s=0.05, timeout_s=30), http)
        candidate = Candidate(name="replicate", adapter=adapter, breaker=RedisCircuitBreaker(redis, keys, "replicate"),
                              keys=RedisKeyPool(redis, keys, "replicate", [ApiKey("replicate", TOKEN)]),
                              cost_micros=COST, timeout_s=35)
        yield Paid(fake, Failover([candidate], budget=ledger, calls=calls, guard=guard), calls, guard, ledger,
                   journal)


async def _killed_mid_wait(paid: Paid, job_id: str) -> str:
    first = asyncio.create_task(paid.failover.generate(job_id, SPEC))
    prediction_id = await paid.created(job_id)
    # A cancel can be swallowed by a library the task is inside at that instant (seen once in ~10
    # runs); a kill cannot, so keep cancelling until the task is gone.
    while not first.done():
        first.cancel()
        await asyncio.sleep(0.01)
    assert first.cancelled(), "the first attempt finished before it could be killed"
    assert len(paid.creates()) == 1
    return prediction_id


async def test_a_replay_resumes_the_prediction_it_paid_for(paid):
    job_id = c.new_job_id()
    prediction_id = await _killed_mid_wait(paid, job_id)
    assert len(paid.creates()) == 1

    image, attempts = await paid.failover.generate(job_id, SPEC)  # the replay

    assert image.data == paid.fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    assert (image.provider, attempts) == ("replicate", 1)
    assert paid.creates() == ["/v1/models/black-forest-labs/flux-schnell/predictions"]  # one create, one payment
    assert f"/v1/predictions/{prediction_id}" in paid.requests("GET")  # the replay polled the same prediction
    assert paid.requests("POST", "/cancel") == []
    snap = await paid.ledger.snapshot()
    assert (snap.spent_micros, snap.reserved_micros) == (COST, 0)  # one reservation, settled once
    [entry] = await paid.journal.month(snap.month)
    assert (entry.call, entry.state, entry.cost_micros) == (f"{job_id}:replicate:1", "settled", COST)


async def test_a_replay_of_a_finished_job_cancels_the_prediction(paid):
    job_id = c.new_job_id()
    prediction_id = await _killed_mid_wait(paid, job_id)
    # Meanwhile another path finished the job (a router that routed it twice, say).
    finished = c.GenerationFailed(job_id=job_id, tenant="studio", error=c.ErrorInfo(
        code="x", message="finished elsewhere", stage="generator", retryable=False))
    assert await paid.guard.claim(finished) == finished

    with pytest.raises(JobAlreadyFinished):
        await paid.failover.generate(job_id, SPEC)

    assert paid.requests("POST", "/cancel") == [f"/v1/predictions/{prediction_id}/cancel"]
    assert len(paid.creates()) == 1
    snap = await paid.ledger.snapshot()
    assert (snap.spent_micros, snap.reserved_micros) == (0, 0)  # refunded: a cancelled flux image is not billed


async def test_two_concurrent_replays_create_one_prediction(paid):
    job_id = c.new_job_id()
    results = await asyncio.gather(*(paid.failover.generate(job_id, SPEC) for _ in range(3)))

    expected = paid.fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    assert [image.data for image, _ in results] == [expected] * 3
    assert len(paid.creates()) == 1
    snap = await paid.ledger.snapshot()
    assert (snap.spent_micros, snap.reserved_micros) == (COST, 0)


async def test_a_failed_call_is_closed_and_the_next_attempt_pays_for_a_new_one(paid):
    job_id = c.new_job_id()
    paid.fake.knobs.slow_start_polls = 0
    paid.fake.knobs.fail_next = ["500"]  # the first create fails: refunded, call 1 closed

    image, attempts = await paid.failover.generate(job_id, SPEC)

    assert attempts == 2 and len(paid.creates()) == 2
    assert (await paid.calls.current(job_id, "replicate")).seq == 2
    snap = await paid.ledger.snapshot()
    assert (snap.spent_micros, snap.reserved_micros) == (COST, 0)
    states = sorted((e.call, e.state) for e in await paid.journal.month(snap.month))
    assert states == [(f"{job_id}:replicate:1", "refunded"), (f"{job_id}:replicate:2", "settled")]
