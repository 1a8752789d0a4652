"""``POST /v1/generations/{job_id}/cancel``: end a job ``canceled`` before it has an image.

Cancelling claims the job's terminal guard with a ``canceled`` event and publishes it on
``generation.failed``, where subscribers already listen. Every later stage asks the guard first:
the router drops the request, a generator skips a queued job, and a running Replicate prediction
sees it at its next poll and is cancelled at the provider (its reservation refunded: never billed).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from services.common.contracts import GenerationFailed
from services.common.jobs import TERMINAL, JobView, TerminalBeingPublished, terminal_outcome
from services.common.kafka import send_event
from services.ingest import handlers
from services.ingest.api_models import MessageBody, ValidationErrorBody
from services.ingest.auth import DepsDep, TenantDep
from services.ingest.errors import Unavailable
from services.ingest.validation import Utf8JsonRoute

router = APIRouter(route_class=Utf8JsonRoute)


class CancelBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "the player left the match"}]})

    reason: str = Field("canceled by the client", min_length=1, max_length=500,
                        description="Why: kept on the job's error and its terminal event.")


@router.post(
    "/v1/generations/{job_id}/cancel", tags=["generations"], summary="Cancel a job", response_model=JobView,
    responses={
        400: {"model": MessageBody, "description": "The body is not UTF-8, or nests too deeply to parse."},
        401: {"model": MessageBody, "description": "API keys are configured and none was sent, or it is unknown."},
        404: {"model": MessageBody, "description": "No such job (or it belongs to another tenant, or it expired)."},
        409: {"model": MessageBody, "description": "The job has ended already (or is ending right now)."},
        422: {"model": ValidationErrorBody, "description": "`reason` is empty or longer than 500 characters."},
        503: {"model": MessageBody, "description": "Kafka did not acknowledge the cancellation; retry."},
    },
)
async def cancel_generation(job_id: str, tenant: TenantDep, deps: DepsDep,
                            body: Annotated[CancelBody | None, Body()] = None) -> JobView:
    """End the job `canceled`: a queued job never reaches a provider, a running paid prediction is cancelled
    at the provider. One terminal event (`generation.failed`, `error.code` `canceled`) carries the reason."""
    view = await handlers.get_job(job_id, tenant, deps)
    if view.status in TERMINAL or deps.guard is None:
        raise HTTPException(409, f"job {job_id} has ended already ({view.status})")
    event = GenerationFailed.cancel(job_id, view.tenant or tenant, (body or CancelBody()).reason, stage="ingest")
    try:
        outcome = await terminal_outcome(event, topic=deps.topics.name("generation.failed"), guard=deps.guard,
                                         jobs=deps.jobs)
    except TerminalBeingPublished:
        raise HTTPException(409, f"job {job_id} is ending right now; GET it for its status") from None
    for output in outcome.outputs:
        try:
            await asyncio.wait_for(send_event(deps.producer, output.topic, output.event),
                                   deps.settings.publish_timeout_s)
        except (KafkaError, TimeoutError):
            # The event is claimed: a retry of this call publishes the same bytes (the guard gives them back).
            raise Unavailable("kafka", "the cancellation was not acknowledged by Kafka; retry") from None
    if outcome.on_acked is not None:
        await outcome.on_acked()
    return await handlers.get_job(job_id, tenant, deps)
