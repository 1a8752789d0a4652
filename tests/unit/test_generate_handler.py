"""The generator's handler on the port fakes: a routed job becomes image bytes for storage, or its failure."""

from __future__ import annotations

import pytest

from services.common import contracts as c
from services.common.topics import Topics
from services.generator.handlers import PLACEHOLDER_PROVIDER, GenerateHandler
from services.providers.failover import Candidate, Failover
from services.providers.port import PermanentProviderError, RetryableProviderError
from tests.fakes import (
    FAKE_PNG,
    FakeImageProvider,
    MemoryBreaker,
    MemoryBudgetLedger,
    MemoryJobStore,
    MemoryTenantBudgets,
    MemoryTerminalGuard,
)

TOPICS = Topics("t")


async def _no_sleep(_seconds: float) -> None:
    return None


def _handler(*adapters: FakeImageProvider, attempts: int = 3) -> GenerateHandler:
    candidates = [Candidate(name=a.name, adapter=a, breaker=MemoryBreaker(a.name)) for a in adapters]
    return GenerateHandler(failover=Failover(candidates, attempts=attempts, sleep=_no_sleep), topics=TOPICS,
                           jobs=MemoryJobStore(), guard=MemoryTerminalGuard())


def _routed(*, placeholder: bool = False, path: c.Path = "primary") -> c.GenerationRouted:
    request = c.GenerationRequested(job_id=c.new_job_id(), tenant="studio", metadata={"slot": "3"},
                                    spec=c.ImageSpec(prompt="flaming obsidian sword", width=64, height=64, seed=7))
    decision = c.RouteDecision(path=path, reason="test", primary_depth=0, threshold=10, placeholder=placeholder)
    return c.GenerationRouted.from_request(request, decision)


async def test_a_generated_image_goes_to_storage_with_who_made_it():
    adapter = FakeImageProvider("hf-space-a", script=[RetryableProviderError("HTTP 503", provider="hf-space-a")])
    handler = _handler(adapter)
    routed = _routed()

    outcome = await handler.handle(routed)

    [output] = outcome.outputs
    assert output.topic == "t.generation.generated"
    generated = output.event
    assert isinstance(generated, c.GenerationGenerated)
    assert (generated.job_id, generated.image, generated.content_type, generated.provider, generated.model) == (
        routed.job_id, FAKE_PNG, "image/png", "hf-space-a", "fake-model")
    assert (generated.attempts, generated.placeholder, generated.deterministic) == (2, False, False)
    assert (generated.decision, generated.metadata, generated.spec) == (routed.decision, {"slot": "3"}, routed.spec)
    assert generated.timings.generated_at is not None and generated.timings.routed_at == routed.timings.routed_at
    assert outcome.on_acked is None  # not terminal: storage publishes the result
    view = await handler.jobs.get(routed.job_id)
    assert (view.status, view.tenant) == ("generating", "studio")  # the provider is recorded by storage


async def test_a_placeholder_job_never_calls_a_provider():
    adapter = FakeImageProvider("replicate")
    handler = _handler(adapter)

    [output] = (await handler.handle(_routed(placeholder=True, path="fallback"))).outputs

    generated = output.event
    assert (generated.provider, generated.placeholder, generated.deterministic, generated.attempts) == (
        PLACEHOLDER_PROVIDER, True, True, 1)
    assert generated.image.startswith(b"\x89PNG")
    assert adapter.calls == []


async def test_a_provider_failure_is_the_jobs_one_terminal_event():
    adapter = FakeImageProvider("openai-a", always=PermanentProviderError(
        "prompt rejected", provider="openai-a", code="content_policy"))
    handler = _handler(adapter)
    routed = _routed()

    outcome = await handler.handle(routed)

    [output] = outcome.outputs
    assert output.topic == "t.generation.failed"
    failed = output.event
    assert isinstance(failed, c.GenerationFailed)
    assert failed.error == c.ErrorInfo(code="content_policy", message="openai-a: prompt rejected (content_policy)",
                                       stage="generator", retryable=False, provider="openai-a")
    assert (failed.job_id, failed.tenant, failed.metadata) == (routed.job_id, "studio", {"slot": "3"})
    assert (await handler.jobs.get(routed.job_id)).status == "generating"

    # A replay before the broker acknowledged the first gets the same event back; after, nothing.
    adapter.always = PermanentProviderError("different words", provider="openai-a", code="rejected")
    [again] = (await handler.handle(routed)).outputs
    assert again.event.to_json_bytes() == failed.to_json_bytes()
    await outcome.on_acked()
    view = await handler.jobs.get(routed.job_id)
    assert (view.status, view.error["code"]) == ("failed", "content_policy")
    assert list((await handler.handle(routed)).outputs) == []


@pytest.mark.parametrize("attempts", [1, 3])
async def test_no_provider_left_is_a_retryable_failure(attempts):
    handler = _handler(FakeImageProvider("space-a", always=RetryableProviderError("HTTP 502", provider="space-a")),
                       attempts=attempts)

    [output] = (await handler.handle(_routed())).outputs

    error = output.event.error
    assert (error.retryable, error.provider, error.stage) == (True, "space-a", "generator")
    assert error.code == "unavailable"


async def test_a_paid_call_counts_against_the_jobs_tenant_and_stops_at_its_budget():
    cost = 2_300
    ledger = MemoryBudgetLedger(cap_micros=10_000_000, tenants=MemoryTenantBudgets({"studio": cost, "other": None}))
    paid = FakeImageProvider("replicate")
    handler = GenerateHandler(
        failover=Failover([Candidate(name="replicate", adapter=paid, breaker=MemoryBreaker("replicate"),
                                     cost_micros=cost)], budget=ledger, sleep=_no_sleep),
        topics=TOPICS, jobs=MemoryJobStore(), guard=MemoryTerminalGuard())

    [first] = (await handler.handle(_routed(path="fallback"))).outputs
    assert first.topic == "t.generation.generated"
    assert (await ledger.tenant_snapshot("studio")).spent_micros == cost

    [refused] = (await handler.handle(_routed(path="fallback"))).outputs  # its tenant's budget is spent
    assert refused.topic == "t.generation.failed"
    assert refused.event.error.code == "no_provider_available" and "'studio'" in refused.event.error.message
    other = c.GenerationRouted.from_request(
        c.GenerationRequested(job_id=c.new_job_id(), tenant="other", spec=c.ImageSpec(prompt="ruby ring")),
        c.RouteDecision(path="fallback", reason="test", primary_depth=0, threshold=10))
    [theirs] = (await handler.handle(other)).outputs  # another tenant still pays
    assert theirs.topic == "t.generation.generated"
    assert len(paid.calls) == 2
