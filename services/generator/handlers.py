"""Turning a routed job into image bytes, or into the job's failure."""

from __future__ import annotations

import asyncio
import logging
import random
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
from services.generator.provider import (
    GeneratedImage,
    ImageProvider,
    ProviderError,
    RetryableProviderError,
)

log = logging.getLogger(__name__)


@dataclass
class GenerateHandler:
    """One routed job → ``GenerationGenerated`` (to storage) or ``GenerationFailed`` (terminal)."""

    provider: ImageProvider
    topics: Topics
    jobs: JobStore
    guard: TerminalGuard
    attempts: int
    timeout_s: float

    async def handle(self, routed: GenerationRouted) -> Outcome:
        await self.jobs.update(routed.job_id, "generating", tenant=routed.tenant, provider=self.provider.name)
        try:
            image, attempts = await self._generate(routed)
        except ProviderError as exc:
            failed = GenerationFailed(
                job_id=routed.job_id, tenant=routed.tenant, trace=routed.trace.child(), metadata=routed.metadata,
                timings=routed.timings,
                error=ErrorInfo(code=exc.code, message=str(exc), stage="generator", retryable=exc.retryable,
                                provider=exc.provider),
            )
            return await terminal_outcome(failed, topic=self.topics.name("generation.failed"), guard=self.guard,
                                          jobs=self.jobs)
        generated = GenerationGenerated.from_routed(
            routed, image=image.data, content_type=image.content_type, provider=image.provider, model=image.model,
            deterministic=image.deterministic, placeholder=image.placeholder, attempts=attempts,
        )
        return Outcome([Output(self.topics.name("generation.generated"), generated)])

    async def _generate(self, routed: GenerationRouted) -> tuple[GeneratedImage, int]:
        """Call the provider, retrying retryable errors with backoff; ours is the only retry loop."""
        for attempt in range(1, self.attempts + 1):
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await self.provider.generate(routed.spec), attempt
            except TimeoutError:
                error: ProviderError = RetryableProviderError(
                    f"no image within {self.timeout_s:.0f} s", provider=self.provider.name, code="timeout")
            except RetryableProviderError as exc:
                error = exc
            if attempt == self.attempts:
                raise error
            delay = min(10.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning("job %s: %s (attempt %d/%d), retrying in %.1fs", routed.job_id, error, attempt,
                        self.attempts, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")
