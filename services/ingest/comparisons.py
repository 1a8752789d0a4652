"""What the ingest API decides for comparisons: check and store the images, queue, wait, read.

Images are checked at the door (``services.ingest.images``); the comparer does the rest.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter
from pydantic import ValidationError

from services.common.contracts import (
    ComparisonRequested,
    ImageRef,
    JobImage,
    new_job_id,
)
from services.common.jobs import TERMINAL, JobView
from services.ingest.api_models import (
    ComparisonRequestBody,
    ComparisonView,
    contract_errors,
)
from services.ingest.deps import IngestDeps
from services.ingest.errors import InvalidRequest, JobNotFound
from services.ingest.handlers import get_job, publish_or_fail
from services.ingest.images import checked_image

log = logging.getLogger(__name__)

COMPARISONS = Counter("forgeline_ingest_comparisons_total", "Comparison requests by outcome.", ["outcome"])

async def _generated_ref(value: str, tenant: str, deps: IngestDeps) -> ImageRef:
    if value.startswith(("data:", "http://", "https://")):
        return await checked_image(value, field="generated_image", deps=deps)
    try:
        view = await get_job(value, tenant, deps)
    except JobNotFound:
        raise InvalidRequest([{"type": "job_not_found", "loc": ["body", "generated_image"],
                               "msg": f"no generation job {value[:64]}: give a job id, a data: URL or an https URL"}]
                             ) from None
    if view.kind != "generation" or view.status != "completed":
        raise InvalidRequest([{"type": "job_not_completed", "loc": ["body", "generated_image"],
                               "msg": f"job {value} is {view.status}; compare once it has completed"}])
    return JobImage(job_id=value)


async def submit_comparison(body: ComparisonRequestBody, tenant: str, deps: IngestDeps) -> str:
    """Queue a comparison; returns its id. Raises ``InvalidRequest``, ``PayloadTooLarge`` or ``Unavailable``."""
    target = await checked_image(body.target_image, field="target_image", deps=deps)
    generated = await _generated_ref(body.generated_image, tenant, deps)
    try:
        request = ComparisonRequested(job_id=new_job_id(), tenant=tenant, target_image=target,
                                      generated_image=generated, original_prompt=body.original_prompt)
    except ValidationError as exc:
        raise InvalidRequest(contract_errors(exc)) from None

    await deps.jobs.update(request.job_id, "queued", kind="comparison", tenant=tenant)
    await publish_or_fail(request, "comparison.requested", deps, what="comparison", outcomes=COMPARISONS)
    COMPARISONS.labels("queued").inc()
    return request.job_id


async def get_comparison(comparison_id: str, tenant: str, deps: IngestDeps) -> JobView:
    view = await get_job(comparison_id, tenant, deps)
    if view.kind != "comparison":
        raise JobNotFound(comparison_id)
    return view


async def wait_for(comparison_id: str, tenant: str, wait_s: float, deps: IngestDeps) -> JobView:
    """The comparison once it ends, or as it is after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    after = "0"
    # A blocking read must return before the Redis client's socket timeout, or it fails.
    block_cap_ms = int(800 * deps.connections.redis.socket_timeout_s)
    while (left := deadline - time.monotonic()) > 0:
        for entry_id, view in await deps.jobs.changes(comparison_id, after, block_ms=max(1, min(int(left * 1000),
                                                                                                 block_cap_ms))):
            after = entry_id
            if view.status in TERMINAL:
                return await get_comparison(comparison_id, tenant, deps)
    return await get_comparison(comparison_id, tenant, deps)


def comparison_view(view: JobView) -> ComparisonView:
    """The API's view of a comparison: status, and the result or the error once it ended."""
    event = view.result or {}
    return ComparisonView(
        comparison_id=view.job_id, status=view.status, cached=view.cached, result=event.get("result"),
        error=view.error, generation_job_id=view.generation_job_id or event.get("generation_job_id"),
        created_at=view.created_at, updated_at=view.updated_at, status_url=f"/v1/comparisons/{view.job_id}",
    )
