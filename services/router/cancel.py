"""Cancellations from Kafka-native clients (``generation.cancel``): the job ends ``canceled``, once.

The same rule as ingest's ``POST …/cancel``: the terminal guard takes a ``canceled`` event, and every
later stage that asks it skips the job. A cancellation that arrives before its request is kept
too: the request, when it comes, finds the job ended and is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter

from services.common.consumer import Outcome
from services.common.contracts import GenerationCancelRequested, GenerationFailed
from services.common.jobs import TERMINAL, terminal_outcome
from services.common.ports import JobStore, TerminalGuard
from services.common.topics import Topics

log = logging.getLogger(__name__)

CANCELS = Counter("forgeline_router_cancels_total", "Kafka-native cancellations by outcome.", ["outcome"])


@dataclass
class CancelHandler:
    topics: Topics
    jobs: JobStore
    guard: TerminalGuard

    async def handle(self, request: GenerationCancelRequested) -> Outcome:
        view = await self.jobs.get(request.job_id)
        if view is not None and view.tenant is not None and view.tenant != request.tenant:
            # Only the job's own tenant may end it; the record is not an error to retry.
            log.warning("cancel of job %s by tenant %r ignored: the job is %r's", request.job_id, request.tenant,
                        view.tenant)
            CANCELS.labels("other_tenant").inc()
            return Outcome()
        if view is not None and view.status in TERMINAL:
            CANCELS.labels("ended").inc()
            return Outcome()
        CANCELS.labels("canceled").inc()
        event = GenerationFailed.cancel(request.job_id, request.tenant, request.reason, stage="router")
        return await terminal_outcome(event, topic=self.topics.name("generation.failed"), guard=self.guard,
                                      jobs=self.jobs)
