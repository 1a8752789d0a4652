"""The HTTP routes: parse, call one handler, shape the response. Decisions live in ``handlers``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from services.common.jobs import TERMINAL, JobView
from services.ingest import comparisons, handlers, status, webhooks
from services.ingest.api_models import (
    Accepted,
    ComparisonRequestBody,
    ComparisonView,
    GenerationRequestBody,
    GenerationResult,
    Health,
    MessageBody,
    PipelineStatus,
    Readiness,
    ValidationErrorBody,
)
from services.ingest.auth import DepsDep, TenantDep
from services.ingest.limits import admitted
from services.ingest.validation import STREAM_ID_PATTERN, Utf8JsonRoute

router = APIRouter(route_class=Utf8JsonRoute)

Responses = dict[int | str, dict[str, Any]]

# What every route that names its caller can answer besides its own statuses.
_CALLER_ERRORS: Responses = {
    401: {"model": MessageBody, "description": "API keys are configured and none was sent, or it is unknown."},
    422: {"model": ValidationErrorBody,
          "description": "A header, path or query parameter is invalid (e.g. X-Forgeline-Tenant); detail[].loc "
                         "names it, with at most a short excerpt of what was sent."},
    503: {"model": MessageBody, "description": "Redis (the job store) or Kafka is unavailable; retry shortly."},
}
_LIMITED: Responses = {
    429: {"model": MessageBody, "description": "The tenant's rate limit (`Retry-After`, `RateLimit-Policy`, "
                                               "`RateLimit`) or its cap on jobs in flight was reached."},
}
_NOT_FOUND: Responses = {
    404: {"model": MessageBody, "description": "No such job (or it belongs to another tenant, or it expired)."},
}
_BODY_ERRORS: Responses = {
    400: {"model": MessageBody, "description": "The body is not UTF-8, or nests too deeply to parse."},
}


# One server-sent event, as OpenAPI 3.2's itemSchema describes a stream's items (the stream's
# schema: an array of them); `: keepalive` comments are not events.
_SSE_ITEM: dict[str, Any] = {
    "type": "object",
    "required": ["event", "id", "data"],
    "properties": {"event": {"const": "status"}, "id": {"type": "string", "pattern": STREAM_ID_PATTERN},
                   "data": {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/JobView"}}},
}


def status_url(job_id: str) -> str:
    return f"/v1/generations/{job_id}"


def events_url(job_id: str) -> str:
    return f"/v1/generations/{job_id}/events"


@router.post(
    "/v1/generations",
    tags=["generations"],
    summary="Request an image",
    status_code=202,
    response_model=Accepted,
    dependencies=[Depends(admitted)],
    responses={**_LIMITED,
        200: {"model": GenerationResult,
              "description": "Already done: served from the result cache, or a repeated Idempotency-Key of a "
                             "finished job. The image URL is in the body; no job runs."},
        **_CALLER_ERRORS, **_BODY_ERRORS,
        413: {"model": MessageBody, "description": "The body is larger than the configured limit (14 MiB), or "
                                                   "reference_image is over 10 MB, whatever its encoding."},
        422: {"model": ValidationErrorBody,
              "description": "A field is invalid (each one is named in detail[].loc, with at most a short excerpt "
                             "of what was sent): out of range, a string where a number belongs, NaN or Infinity, "
                             "invalid Unicode, malformed JSON, an unreadable reference_image, or an "
                             "Idempotency-Key used before with a different body (idempotency_key_reused)."},
        503: {"model": MessageBody, "description": "Kafka or Redis is unavailable; retry with the same "
                                                   "Idempotency-Key."},
    },
)
async def create_generation(
    body: GenerationRequestBody,
    tenant: TenantDep,
    deps: DepsDep,
    # Typed str, not str | None: a header is text or absent, and the schema must not offer null.
    idempotency_key: Annotated[str, Header(
        alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[!-~]+$",
        description="Any unique string of 1–255 visible ASCII characters (a UUID, say). Retrying with the same key "
                    "returns the same job, never a new one, for as long as the job's status is kept.",
    )] = None,  # type: ignore[assignment]
) -> Response:
    """Queue a generation job and return at once (202) with where to follow it.

    A request whose normalised spec was generated before is answered from the result cache
    (200, `cached: true`) without running a job.
    """
    return generation_response(await handlers.submit(body, tenant, idempotency_key, deps))


def generation_response(result: handlers.SubmitResult) -> Response:
    """202 with where to follow a queued job, or 200 with a finished one (a cache hit, a replay)."""
    if not result.finished:
        accepted = Accepted(job_id=result.job_id, status=result.status, status_url=status_url(result.job_id),
                            events_url=events_url(result.job_id), idempotent_replay=result.outcome == "replayed")
        return _json(accepted, status_code=202)
    return _json(_finished(result), status_code=200)


def _json(model: BaseModel, *, status_code: int) -> Response:
    """``model`` as JSON, encoded by pydantic in one step (the bytes ``JSONResponse(model_dump())`` gives)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def _finished(result: handlers.SubmitResult) -> GenerationResult:
    urls = {"status_url": status_url(result.job_id), "events_url": events_url(result.job_id)}
    if result.completed is not None:  # a cache hit now
        done = result.completed
        return GenerationResult(
            job_id=result.job_id, status="completed", cached=True, url=done.url, sha256=done.sha256,
            content_type=done.content_type, size_bytes=done.size_bytes, provider=done.provider,
            deterministic=done.deterministic, placeholder=done.placeholder, metadata=result.metadata or {}, **urls)
    view = result.view
    assert view is not None and view.status in TERMINAL
    stored = view.result or {}
    return GenerationResult(
        job_id=result.job_id, status=view.status, cached=view.cached, url=view.url, sha256=stored.get("sha256"),
        content_type=stored.get("content_type"), size_bytes=stored.get("size_bytes"), provider=view.provider,
        deterministic=view.deterministic, placeholder=view.placeholder, metadata=stored.get("metadata") or {},
        error=view.error, idempotent_replay=True, **urls)


@router.get("/v1/generations/{job_id}", tags=["generations"], summary="A job's status", response_model=JobView,
            responses={**_CALLER_ERRORS, **_NOT_FOUND})
async def get_generation(job_id: str, tenant: TenantDep, deps: DepsDep) -> JobView:
    """The job's status, route, timings, once completed the image URL, and its webhook deliveries."""
    return await webhooks.with_deliveries(await handlers.get_job(job_id, tenant, deps), deps)


@router.get(
    "/v1/generations/{job_id}/events",
    tags=["generations"],
    summary="Follow a job (server-sent events)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {"schema": {"type": "array", "items": _SSE_ITEM},
                                                "itemSchema": _SSE_ITEM}},
              "description": "`event: status` per change (`id:` the change's id, `data:` the job as JSON), from "
                             "the first; `: keepalive` comments while waiting; the stream ends after `completed` "
                             "or `failed`."},
        **_CALLER_ERRORS, **_NOT_FOUND,
    },
)
async def follow_generation(
    job_id: str,
    tenant: TenantDep,
    deps: DepsDep,
    last_event_id: Annotated[str, Header(
        alias="Last-Event-ID", pattern=STREAM_ID_PATTERN,
        description="Resume after this event id (browsers send it when they reconnect): `<ms>` or `<ms>-<seq>`, "
                    "each a decimal of at most 18446744073709551615 without leading zeros, as Redis streams take it.",
    )] = None,  # type: ignore[assignment]
) -> StreamingResponse:
    """Replay every status change of the job, then stream new ones until it ends."""
    await handlers.get_job(job_id, tenant, deps)  # 404 before the stream starts
    frames = _sse(handlers.watch(job_id, last_event_id or "0", deps))
    # no-cache and X-Accel-Buffering: proxies (nginx) must pass each event on at once.
    return StreamingResponse(frames, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(changes: AsyncIterator[tuple[str, JobView] | None]) -> AsyncIterator[str]:
    async for change in changes:
        if change is None:
            yield ": keepalive\n\n"
            continue
        entry_id, view = change
        yield f"event: status\nid: {entry_id}\ndata: {view.model_dump_json()}\n\n"


@router.post(
    "/v1/comparisons",
    tags=["comparisons"],
    summary="Score an image against a target",
    status_code=202,
    response_model=ComparisonView,
    dependencies=[Depends(admitted)],
    responses={**_LIMITED,
        200: {"model": ComparisonView, "description": "With `?wait=N`: the comparison ended within N seconds."},
        **_CALLER_ERRORS, **_BODY_ERRORS,
        413: {"model": MessageBody, "description": "An image is over 10 MB (whatever its encoding), or the body over "
                                                   "its limit (28 MiB)."},
        422: {"model": ValidationErrorBody,
              "description": "A field is invalid: an image that is not PNG/JPEG/WebP (by its bytes), over 4096×4096, "
                             "a decompression bomb, an URL that is not https or points at a private address, or a "
                             "job id that is unknown or not completed. detail[].loc names the field."},
        503: {"model": MessageBody, "description": "Kafka, Redis or the image store is unavailable; retry."},
    },
)
async def create_comparison(
    body: ComparisonRequestBody,
    tenant: TenantDep,
    deps: DepsDep,
    wait: Annotated[float, Query(
        ge=0, le=300, allow_inf_nan=False, description="Wait up to this many seconds for the result (capped by the server's limit); "
                                  "0: answer at once with 202.")] = 0,
) -> JSONResponse:
    """Queue a comparison of `generated_image` against `target_image` for `original_prompt`.

    The result: a similarity score 0–100 with its quality band and colour, the key differences,
    prompt improvements, and which method judged (a VLM, or the perceptual comparer).
    """
    comparison_id = await comparisons.submit_comparison(body, tenant, deps)
    view = await comparisons.get_comparison(comparison_id, tenant, deps)
    if wait > 0:
        view = await comparisons.wait_for(comparison_id, tenant, min(wait, deps.settings.comparison_wait_max_s), deps)
    done = view.status in ("completed", "failed")
    return JSONResponse(comparisons.comparison_view(view).model_dump(mode="json"), status_code=200 if done else 202)


@router.get("/v1/comparisons/{comparison_id}", tags=["comparisons"], summary="A comparison",
            response_model=ComparisonView, responses={**_CALLER_ERRORS, **_NOT_FOUND})
async def get_comparison(comparison_id: str, tenant: TenantDep, deps: DepsDep) -> ComparisonView:
    """The comparison's status and, once it ended, its result or error."""
    return comparisons.comparison_view(await comparisons.get_comparison(comparison_id, tenant, deps))


@router.get("/v1/status", tags=["operations"], summary="Pipeline status", response_model=PipelineStatus,
            responses=_CALLER_ERRORS)
async def pipeline_status(_tenant: TenantDep, deps: DepsDep) -> dict[str, Any]:
    """Queue depth of each generator path, how jobs were routed, and the result cache's hit rate."""
    return await status.pipeline_status(deps)


@router.get("/healthz", tags=["operations"], summary="Liveness", response_model=Health)
async def healthz() -> Health:
    """200 while the process serves requests. Says nothing about Kafka or Redis (see /readyz)."""
    return Health()


@router.get("/readyz", tags=["operations"], summary="Readiness", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Kafka or Redis does not answer; see `checks`."}})
async def readyz(deps: DepsDep) -> JSONResponse:
    """200 when Kafka and Redis both answer within the probe timeout; 503 naming the one that does not."""
    checks = await status.readiness(deps)
    ready = all(state == "ok" for state in checks.values())
    body = Readiness(status="ready" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
