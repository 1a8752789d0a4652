"""Per-tenant limits at the door: the token bucket on every POST, the in-flight cap on every queued job.

The bucket costs one Redis call (``RateLimiter.admit``) on the hot path, cache hits included.
The in-flight slot is taken only when a job is queued (a cache hit runs no job), right before
its status is written; the job store frees it when the job ends.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from starlette.types import Scope

from services.common.tenants import Caller, TenantLimits
from services.ingest.auth import CallerDep, DepsDep
from services.ingest.deps import IngestDeps

RATE_LIMITED = Counter("forgeline_ingest_rate_limited_total", "Requests refused by a tenant's limits.",
                       ["tenant", "reason"])

_HEADERS_STATE = "ratelimit_headers"


class TooManyInFlight(Exception):
    """The tenant has as many jobs queued or running as its cap allows."""

    def __init__(self, tenant: str, cap: int) -> None:
        super().__init__(f"tenant {tenant!r} has {cap} jobs in flight, its limit (max_in_flight); "
                         "retry when one of them ends")


async def admitted(request: Request, caller: CallerDep, deps: DepsDep) -> None:
    """Spend a token of the caller's buckets; 429 with ``Retry-After`` and the RateLimit headers when empty."""
    await admit(caller, deps, request.scope)


async def admit(caller: Caller, deps: IngestDeps, scope: Scope) -> None:
    """``admitted`` on a bare ASGI ``scope``: the RateLimit headers go into its state, for ``RateLimitHeaders``."""
    if deps.limiter is None:
        return
    admission = await deps.limiter.admit(caller)
    headers = admission.headers(caller)
    if not admission.allowed:
        RATE_LIMITED.labels(caller.tenant, admission.reason).inc()
        raise HTTPException(status_code=429, headers=headers, detail=(
            f"rate limit of tenant {caller.tenant!r} reached; retry after {headers['Retry-After']} s"))
    if headers:
        scope.setdefault("state", {})[_HEADERS_STATE] = headers


async def take_slot(tenant: str, job_id: str, deps: IngestDeps) -> None:
    """An in-flight slot for ``job_id`` under its tenant's cap; raises ``TooManyInFlight``."""
    if deps.limiter is None or deps.tenants is None:
        return
    limits = await deps.tenants.limits(tenant)
    if limits.max_in_flight is None:
        return
    caller = Caller(tenant=tenant, key_id=None, tenant_limits=TenantLimits(max_in_flight=limits.max_in_flight))
    admission = await deps.limiter.admit(caller, job_id=job_id, buckets=False)
    if not admission.allowed:
        RATE_LIMITED.labels(tenant, admission.reason).inc()
        raise TooManyInFlight(tenant, limits.max_in_flight)


class RateLimitHeaders:
    """ASGI middleware: the RateLimit headers ``admitted`` computed go on the response, whatever made it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                extra = (scope.get("state") or {}).get(_HEADERS_STATE)
                if extra:
                    message["headers"] = [*message.get("headers", ()),
                                          *((k.lower().encode(), v.encode()) for k, v in extra.items())]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """The refusal's 429 and the headers' middleware on ``app``."""

    async def too_many(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "1"})

    app.add_exception_handler(TooManyInFlight, too_many)
    app.add_middleware(RateLimitHeaders)
