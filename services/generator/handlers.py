"""Turning a routed job into image bytes, or into the job's failure (the retries live in ``Failover``)."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field

from services.common.consumer import Outcome, Output
from services.common.contracts import (
    ErrorInfo,
    GenerationFailed,
    GenerationGenerated,
    GenerationRouted,
    webhook_fields,
)
from services.common.errors import Retryable
from services.common.jobs import terminal_outcome
from services.common.ports import JobStore, TerminalGuard
from services.common.topics import Topics
from services.providers.failover import Failover
from services.providers.port import GeneratedImage, JobAlreadyFinished, ProviderError
from services.providers.procedural import ProceduralProvider

#: The provider name of a placeholder the router asked for (the paid path was refused).
PLACEHOLDER_PROVIDER = "procedural-placeholder"


@dataclass
class GenerateHandler:
    """One routed job → ``GenerationGenerated`` (to storage) or ``GenerationFailed`` (terminal)."""

    failover: Failover
    topics: Topics
    jobs: JobStore
    guard: TerminalGuard
    placeholders: ProceduralProvider = field(default_factory=ProceduralProvider)

    async def _placeholder(self, routed: GenerationRouted) -> tuple[GeneratedImage, int]:
        """The router's call: no paid provider (budget refused), a free procedural stand-in instead."""
        image = await self.placeholders.generate(routed.spec)
        return dataclasses.replace(image, placeholder=True, provider=PLACEHOLDER_PROVIDER), 1

    async def handle(self, routed: GenerationRouted) -> Outcome:
        # Cancelled while it waited in the queue: no provider call for it. (Any other ended job goes on:
        # its replay republishes the stored terminal event, or resumes and cancels its paid call.)
        # Read and update at once: an ended job takes no status change, so the update cannot undo a cancel.
        current, _ = await asyncio.gather(self.jobs.get(routed.job_id),
                                          self.jobs.update(routed.job_id, "generating", tenant=routed.tenant))
        if current is not None and current.status == "canceled":
            return Outcome()
        try:
            if routed.decision.placeholder:
                image, attempts = await self._placeholder(routed)
            else:
                image, attempts = await self.failover.generate(routed.job_id, routed.spec, tenant=routed.tenant)
        except JobAlreadyFinished:
            # A replay of a job whose result exists: whoever made it terminal publishes it, once.
            return Outcome()
        except ProviderError as exc:
            failed = GenerationFailed(
                job_id=routed.job_id, tenant=routed.tenant, trace=routed.trace.child(), metadata=routed.metadata,
                timings=routed.timings, **webhook_fields(routed),
                error=ErrorInfo(code=exc.code, message=str(exc), stage="generator",
                                retryable=isinstance(exc, Retryable), provider=exc.provider),
            )
            return await terminal_outcome(failed, topic=self.topics.name("generation.failed"), guard=self.guard,
                                          jobs=self.jobs)
        await self.jobs.update(routed.job_id, "generating", provider=image.provider)
        generated = GenerationGenerated.from_routed(
            routed, image=image.data, content_type=image.content_type, provider=image.provider, model=image.model,
            deterministic=image.deterministic, placeholder=image.placeholder, attempts=attempts,
        )
        return Outcome([Output(self.topics.name("generation.generated"), generated)])
