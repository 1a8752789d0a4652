"""One comparison request in, its one terminal event out (and the generation's, when it asked).

A request that came from a generation with a reference image carries that generation's
finished result (``completion``): the comparer publishes it on ``generation.completed`` with
the comparison attached — or, when the reference could not be read, with ``comparison_error``,
because the image itself is fine and the game is waiting for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.common.consumer import Outcome
from services.common.contracts import (
    ComparisonCompleted,
    ComparisonFailed,
    ComparisonRequested,
    ErrorInfo,
    utcnow,
)
from services.common.errors import Retryable
from services.common.images import ImageInputError
from services.common.jobs import (
    merge_outcomes,
    terminal_outcome,
)
from services.common.ports import JobStore, RecentJobs, TerminalGuard
from services.common.topics import Topics
from services.comparer.resolve import ImageResolver
from services.comparer.service import ComparisonService

log = logging.getLogger(__name__)


@dataclass
class CompareHandler:
    resolver: ImageResolver
    service: ComparisonService
    topics: Topics
    jobs: JobStore
    guard: TerminalGuard
    recent: RecentJobs | None = None  # the dashboard's gallery; None: not recorded

    async def handle(self, request: ComparisonRequested) -> Outcome:
        try:
            target = await self.resolver.resolve(request.target_image, field="target_image", tenant=request.tenant)
            generated = await self.resolver.resolve(request.generated_image, field="generated_image",
                                                    tenant=request.tenant)
        except ImageInputError as exc:
            log.info("comparison %s refused: %s", request.job_id, exc)
            error = ErrorInfo(code=exc.code, message=str(exc), stage="comparer",
                              retryable=isinstance(exc, Retryable))
            return await self._finish(request, ComparisonFailed(
                job_id=request.job_id, tenant=request.tenant, trace=request.trace.child(), error=error,
                generation_job_id=request.generation_job_id))

        scored = await self.service.score(request.job_id, target, generated, request.original_prompt,
                                          tenant=request.tenant)
        return await self._finish(request, ComparisonCompleted(
            job_id=request.job_id, tenant=request.tenant, trace=request.trace.child(), result=scored.result,
            generation_job_id=request.generation_job_id, cached=scored.cached))

    async def _finish(self, request: ComparisonRequested, event: ComparisonCompleted | ComparisonFailed) -> Outcome:
        completed = isinstance(event, ComparisonCompleted)
        topic = "comparison.completed" if completed else "comparison.failed"
        outcome = await terminal_outcome(event, topic=self.topics.name(topic), guard=self.guard, jobs=self.jobs)
        if request.completion is None:
            return outcome
        completion = request.completion
        generation = completion.model_copy(update={
            "trace": request.trace.child(), "created_at": utcnow(),
            "comparison": event.result if completed else None, "comparison_error": None if completed else event.error,
            "timings": completion.timings.with_stage("completed"),
        })
        return merge_outcomes(outcome, await terminal_outcome(
            generation, topic=self.topics.name("generation.completed"), guard=self.guard, jobs=self.jobs,
            recent=self.recent))
