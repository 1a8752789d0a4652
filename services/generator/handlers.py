"""Turning a routed job into image bytes, or into the job's failure (the retries live in ``Failover``)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.consumer import Outcome, Output
from services.common.contracts import (
    ErrorInfo,
    GenerationFailed,
    GenerationGenerated,
    GenerationRouted,
)
from services.common.jobs import JobStore, TerminalGuard, terminal_outcome
from services.common.topics import Topics
from services.generator.failover import Failover
from services.generator.provider import ProviderError


@dataclass
class GenerateHandler:
    """One routed job → ``GenerationGenerated`` (to storage) or ``GenerationFailed`` (terminal)."""

    failover: Failover
    topics: Topics
    jobs: JobStore
    guard: TerminalGuard

    async def handle(self, routed: GenerationRouted) -> Outcome:
        await self.jobs.update(routed.job_id, "generating", tenant=routed.tenant)
        try:
            image, attempts = await self.failover.generate(routed.job_id, routed.spec)
        except ProviderError as exc:
            failed = GenerationFailed(
                job_id=routed.job_id, tenant=routed.tenant, trace=routed.trace.child(), metadata=routed.metadata,
                timings=routed.timings,
                error=ErrorInfo(code=exc.code, message=str(exc), stage="generator", retryable=exc.retryable,
                                provider=exc.provider),
            )
            return await terminal_outcome(failed, topic=self.topics.name("generation.failed"), guard=self.guard,
                                          jobs=self.jobs)
        await self.jobs.update(routed.job_id, "generating", provider=image.provider)
        generated = GenerationGenerated.from_routed(
            routed, image=image.data, content_type=image.content_type, provider=image.provider, model=image.model,
            deterministic=image.deterministic, placeholder=image.placeholder, attempts=attempts,
        )
        return Outcome([Output(self.topics.name("generation.generated"), generated)])
