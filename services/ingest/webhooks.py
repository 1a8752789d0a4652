"""Webhook routes of the ingest API: the tenant's endpoints and signing secret, a job's deliveries, replay.

A job's own ``webhook_url`` is signed with the tenant's signing secret (``POST /v1/webhooks/secret``);
each registered endpoint has its own. Either secret is shown once, when it is made, and never again
(not in lists, logs or errors).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from services.common.contracts import WEBHOOK_EVENTS, WebhookEvent
from services.common.jobs import JobView
from services.common.webhooks import Attempt, Delivery, DeliveryState, Endpoint
from services.ingest import handlers
from services.ingest.api_models import MessageBody, ValidationErrorBody
from services.ingest.auth import DepsDep, TenantDep
from services.ingest.deps import IngestDeps
from services.ingest.validation import Utf8JsonRoute
from services.ingest.webhook_checks import check_url_allowed, store_of

router = APIRouter(tags=["webhooks"], route_class=Utf8JsonRoute)

_CALLER: dict[int | str, dict[str, Any]] = {
    401: {"model": MessageBody, "description": "API keys are configured and none was sent, or it is unknown."},
    422: {"model": ValidationErrorBody, "description": "A header, path parameter or field is invalid; detail[].loc "
                                                       "names it, with at most a short excerpt of what was sent."},
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    **_CALLER,
    404: {"model": MessageBody, "description": "No such job, endpoint or delivery for this tenant."},
}


# ------------------------------------------------------------------------------------- models


class SigningSecret(BaseModel):
    secret: str = Field(description="whsec_…: verify deliveries with it (Standard Webhooks). Shown only now.")


class EndpointRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={
        "examples": [{"url": "https://game.example.com/hooks", "events": ["completed", "failed"]}]})

    url: str = Field(min_length=8, max_length=2048, pattern=r"^https?://",
                     description="https, on a public address.", examples=["https://game.example.com/hooks"])
    events: tuple[WebhookEvent, ...] = Field(WEBHOOK_EVENTS, min_length=1, description="Which job events it gets.")


class EndpointView(BaseModel):
    endpoint_id: str
    url: str
    events: tuple[WebhookEvent, ...]
    created_at: datetime
    disabled_at: datetime | None = None
    disabled_reason: str | None = Field(None, description="Why deliveries stopped (the receiver answered 410).")

    @classmethod
    def of(cls, endpoint: Endpoint) -> EndpointView:
        return cls.model_validate(endpoint.model_dump(exclude={"secret"}))


class CreatedEndpoint(EndpointView):
    secret: str = Field(description="whsec_…: this endpoint's signing secret. Shown only now.")


class DeliveryView(BaseModel):
    """One event of a job on its way to one URL, with every attempt."""

    delivery_id: str = Field(description="'job' for the job's webhook_url, else the endpoint's id.")
    event_type: str
    webhook_id: str = Field(description="The webhook-id header: the same on every attempt and replay.")
    endpoint_id: str | None = None
    state: DeliveryState
    attempts: tuple[Attempt, ...]
    next_attempt_at: datetime | None = None

    @classmethod
    def of(cls, delivery: Delivery) -> DeliveryView:
        return cls.model_validate(delivery.model_dump(exclude={"payload", "url", "job_id", "tenant", "event_at"}))


# ------------------------------------------------------------------------------------- routes


@router.post("/v1/webhooks/secret", status_code=201, response_model=SigningSecret, summary="Make the signing secret",
             responses=_CALLER)
async def rotate_secret(tenant: TenantDep, deps: DepsDep) -> SigningSecret:
    """Make (or replace) the secret that signs deliveries to jobs' own `webhook_url`. Shown once."""
    return SigningSecret(secret=(await store_of(deps).rotate_secret(tenant)).get_secret_value())


@router.post("/v1/webhooks/endpoints", status_code=201, response_model=CreatedEndpoint, summary="Register an endpoint",
             responses={**_CALLER, 400: {"model": MessageBody, "description": "The body is not UTF-8 JSON."},
                        422: {"model": ValidationErrorBody,
                              "description": "The URL is not https or not on a public address, or a field is invalid."}})
async def add_endpoint(body: EndpointRequest, tenant: TenantDep, deps: DepsDep) -> CreatedEndpoint:
    """Every job of this tenant sends the chosen events here, signed with the secret returned (once)."""
    await check_url_allowed(body.url, field="url", deps=deps)
    endpoint = await store_of(deps).add_endpoint(tenant, body.url, body.events)
    return CreatedEndpoint(**EndpointView.of(endpoint).model_dump(), secret=endpoint.secret.get_secret_value())


@router.get("/v1/webhooks/endpoints", response_model=list[EndpointView], summary="List endpoints",
            responses=_CALLER)
async def list_endpoints(tenant: TenantDep, deps: DepsDep) -> list[EndpointView]:
    """The tenant's endpoints, disabled ones with why (never their secrets)."""
    return [EndpointView.of(endpoint) for endpoint in await store_of(deps).endpoints(tenant)]


@router.delete("/v1/webhooks/endpoints/{endpoint_id}", status_code=204, summary="Remove an endpoint",
               responses=_ERRORS)
async def remove_endpoint(endpoint_id: str, tenant: TenantDep, deps: DepsDep) -> Response:
    if not await store_of(deps).remove_endpoint(tenant, endpoint_id[:64]):
        raise HTTPException(404, f"no endpoint {endpoint_id[:64]}")
    return Response(status_code=204)


async def deliveries_of(job_id: str, deps: IngestDeps) -> list[DeliveryView]:
    return [DeliveryView.of(delivery) for delivery in await store_of(deps).deliveries(job_id)]


async def with_deliveries(view: JobView, deps: IngestDeps) -> JobView:
    """The job as GET shows it: with its webhook deliveries (none: an empty list)."""
    deliveries = [delivery.model_dump(mode="json") for delivery in await deliveries_of(view.job_id, deps)]
    return view.model_copy(update={"deliveries": deliveries})


@router.get("/v1/generations/{job_id}/deliveries", response_model=list[DeliveryView], summary="A job's deliveries",
            responses=_ERRORS)
async def list_deliveries(job_id: str, tenant: TenantDep, deps: DepsDep) -> list[DeliveryView]:
    """Each webhook delivery of the job: state and every attempt (time, HTTP status, latency, error)."""
    await handlers.get_job(job_id, tenant, deps)  # 404 for an unknown job or another tenant's
    return await deliveries_of(job_id, deps)


@router.post("/v1/generations/{job_id}/deliveries/{delivery_id}/replay", status_code=202, response_model=DeliveryView,
             summary="Send a delivery again", responses=_ERRORS)
async def replay_delivery(job_id: str, delivery_id: str, tenant: TenantDep, deps: DepsDep) -> DeliveryView:
    """Send it once more now, with the same webhook-id and body (a fresh timestamp and signature)."""
    await handlers.get_job(job_id, tenant, deps)
    replayed = await store_of(deps).replay(job_id, delivery_id[:64])
    if replayed is None:
        raise HTTPException(404, f"job {job_id} has no delivery {delivery_id[:64]}")
    return DeliveryView.of(replayed)
