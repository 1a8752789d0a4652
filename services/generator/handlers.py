"""Turning a routed job into image bytes, or into the job's failure (the retries live in ``Failover``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from services.common.coalescing import RedisCoalescer, coalesces
from services.common.consumer import Outcome, Output
from services.common.contracts import (
    ErrorInfo,
    GenerationFailed,
    GenerationGenerated,
    GenerationRouted,
    webhook_fields,
)
from services.common.errors import Retryable
from services.common.jobs import JobView, terminal_outcome
from services.common.ports import JobStore, TerminalGuard
from services.common.queue_position import RedisQueueBook
from services.common.topics import Topics
from services.providers.failover import Failover
from services.providers.port import GeneratedImage, JobAlreadyFinished, ProviderError
from services.providers.procedural import ProceduralProvider

log = logging.getLogger(__name__)

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
    coalescer: RedisCoalescer | None = None  # None: no coalescing leases to keep
    queue: RedisQueueBook | None = None  # None: jobs taken up are not counted for queue positions

    async def _hold(self, routed: GenerationRouted) -> str | None:
        """The job's place in its coalescing group, its lease renewed if it leads (None: not coalesced)."""
        if self.coalescer is None or not coalesces(routed):
            return None
        return await self.coalescer.hold(routed)

    @staticmethod
    def _waits_on_another(held: str | None, current: JobView | None) -> bool:
        """A leader that lost its lease (its generator died mid-call) now waits on the job that took it
        over: the redelivered message costs no second call, and the fan-out gives it its image."""
        if current is not None and current.coalesced_with and current.status == "completed":
            return True
        return held == "parked"

    @contextlib.asynccontextmanager
    async def _lease_kept(self, routed: GenerationRouted) -> AsyncIterator[None]:
        """Renew the job's coalescing lease while its provider call runs, so no follower takes it over."""
        if self.coalescer is None or not coalesces(routed):
            yield
            return
        coalescer = self.coalescer

        async def renew() -> None:
            while True:
                await asyncio.sleep(coalescer.lease_s / 3)
                try:
                    await coalescer.renew(routed)
                except Exception as exc:  # noqa: BLE001 — a missed renewal is retried a third of a lease later
                    log.warning("job %s: could not renew its coalescing lease: %r", routed.job_id, exc)

        renewing = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewing.cancel()

    async def _taken_up(self, routed: GenerationRouted) -> None:
        if self.queue is not None:
            await self.queue.started(routed.decision.path, routed.job_id)

    async def _placeholder(self, routed: GenerationRouted) -> tuple[GeneratedImage, int]:
        """The router's call: no paid provider (budget refused), a free procedural stand-in instead."""
        image = await self.placeholders.generate(routed.spec)
        return dataclasses.replace(image, placeholder=True, provider=PLACEHOLDER_PROVIDER), 1

    async def handle(self, routed: GenerationRouted) -> Outcome:
        # Cancelled while it waited in the queue: no provider call for it. (Any other ended job goes on:
        # its replay republishes the stored terminal event, or resumes and cancels its paid call.)
        # Read and update at once: an ended job takes no status change, so the update cannot undo a cancel;
        # the job also counts as taken up on its path (queue positions) in the same wait. A leader's lease
        # is renewed before it looks "generating", so the sweeper cannot hand it over as the call starts.
        held = await self._hold(routed)
        current, *_ = await asyncio.gather(self.jobs.get(routed.job_id),
                                           self.jobs.update(routed.job_id, "generating", tenant=routed.tenant),
                                           self._taken_up(routed))
        if current is not None and current.status == "canceled":
            return Outcome()
        if self._waits_on_another(held, current):
            return Outcome()
        try:
            async with self._lease_kept(routed):
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
        # Who made the image reaches the job's status with storage's "stored" (one status write a job less here).
        generated = GenerationGenerated.from_routed(
            routed, image=image.data, content_type=image.content_type, provider=image.provider, model=image.model,
            deterministic=image.deterministic, placeholder=image.placeholder, attempts=attempts,
        )
        return Outcome([Output(self.topics.name("generation.generated"), generated)])
