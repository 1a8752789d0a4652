"""The ingest process: an HTTP API in front of the ``generation.requested`` topic.

    forgeline run ingest

``create_app`` builds the FastAPI app around its dependencies (no module-level app or
clients); ``build_deps`` opens those clients on the process's ``Infra``; ``build`` is both;
``serve`` runs uvicorn until ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
from collections.abc import Callable, Generator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from services.common import tracing
from services.common.bootstrap import Infra
from services.common.cache import LruTtlCache, RedisResultCache
from services.common.queue_position import RedisQueueBook
from services.common.ratelimit import RateLimiter
from services.common.route_stats import RedisRouteStats
from services.common.tenants import TenantStore
from services.ingest import cancel, dashboard, limits, workers
from services.ingest.deps import IngestDeps, provider_handles
from services.ingest.errors import (
    InvalidRequest,
    JobNotFound,
    PayloadTooLarge,
    Unavailable,
)
from services.ingest.fastpath import CacheHitFastPath
from services.ingest.middleware import BodyLimit, RequestLog
from services.ingest.routes import router
from services.ingest.settings import IngestSettings
from services.ingest.validation import BodyNotParsed, body_not_parsed, request_validation_error
from services.ingest.webhooks import router as webhooks_router
from services.providers.catalog import load_providers_file

# Ingest only reads the result cache; storage writes it with its own TTL. This bounds
# what a test or tool writing through ``IngestDeps.cache`` keeps.
_CACHE_WRITE_TTL_S = 24 * 3600

DESCRIPTION = """
Request game images and follow them to a public URL.

1. `POST /v1/generations` with a prompt → `202` with a `job_id` (or `200` at once when the same
   spec was generated before: the result cache).
2. Follow `events_url` (server-sent events) or poll `status_url` until `completed` (the image
   `url`) or `failed` (an `error` saying whether to retry).

Send an `Idempotency-Key` header to make retries safe: the same key returns the same job.
When the API runs with keys, send yours as `Authorization: Bearer <key>` or `X-API-Key`.
"""

TAGS = [
    {"name": "generations", "description": "Request images and follow their jobs."},
    {"name": "comparisons", "description": "Score a generated image against a target, with prompt advice."},
    {"name": "webhooks", "description": "Signed push delivery of job events (Standard Webhooks v1)."},
    {"name": "operations", "description": "Health, readiness, metrics and pipeline status."},
]


async def build_deps(settings: IngestSettings, infra: Infra) -> IngestDeps:
    """Open every client the API uses, on the process's ``infra`` (which closes them)."""
    # Read before any client opens: a broken providers file fails the start with the file's problem.
    catalog = load_providers_file(settings.providers_file) if settings.providers_file is not None else None
    return IngestDeps(
        settings=settings,
        connections=infra.connections,
        topics=infra.topics,
        groups=infra.groups,
        keys=infra.keys,
        producer=await infra.producer(),
        admin=await infra.admin(),
        offsets=await infra.offsets(),
        redis=infra.redis,
        jobs=infra.jobs(ttl_s=settings.status_ttl_s),
        cache=RedisResultCache(infra.redis, infra.keys, ttl_s=_CACHE_WRITE_TTL_S,
                               local=LruTtlCache(settings.local_cache_size, settings.local_cache_ttl_s)),
        budget=infra.budget,
        routes=RedisRouteStats(infra.redis, infra.keys),
        providers=provider_handles(catalog, infra.redis, infra.keys, infra.environ),
        blobs=infra.blobs,
        tenants=TenantStore(infra.redis, infra.keys, lookup_ttl_s=settings.tenant_lookup_ttl_s),
        limiter=RateLimiter(infra.redis, infra.keys),
        guard=infra.terminal_guard(),
        cache_scope=infra.cache_scope,
        queue=RedisQueueBook(infra.redis, infra.keys),
    )


async def build(settings: IngestSettings, infra: Infra) -> FastAPI:
    """The API: routes and error handlers around its opened dependencies."""
    return create_app(await build_deps(settings, infra))


def create_app(deps: IngestDeps | None) -> FastAPI:
    """The API around ready ``deps`` (None: only to read its OpenAPI document)."""
    app = FastAPI(
        title="Forgeline ingest API",
        version="1.0.0",
        summary="Image generation for game backends.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        # Server spans come from OpenTelemetry's FastAPI instrumentation (``tracing.instrument_app``) and
        # request metrics from ``RequestLog``; FastAPI's own telemetry would only look for providers
        # on every request (3–4 % of a cached request's CPU, profiled in process).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.deps = deps
    if deps is not None and not deps.auth_enabled:
        app.openapi = functools.partial(_without_security, app.openapi)  # type: ignore[method-assign]
    app.include_router(router)
    app.include_router(dashboard.router)
    app.include_router(cancel.router)
    app.include_router(webhooks_router)
    _add_error_handlers(app)
    if deps is not None and deps.settings.fast_cache_hits:
        app.add_middleware(CacheHitFastPath, fastapi=app)  # innermost of ours: the headers, limit and log wrap it
    limits.install(app)
    # Last added is outermost: the log sees the final status, including the limit's 413.
    app.add_middleware(BodyLimit, limit=lambda path: app.state.deps.settings.body_limit(path))
    app.add_middleware(RequestLog)
    tracing.instrument_app(app)  # outermost: the server span covers the whole request
    return app


def _without_security(build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI document of an API that runs without keys: it must not promise a 401 it never sends."""
    schema = build()  # FastAPI builds it once and caches it; removing twice is harmless
    for operations in schema["paths"].values():
        for operation in operations.values():
            operation.pop("security", None)
            operation["responses"].pop("401", None)
    schema.get("components", {}).pop("securitySchemes", None)
    return schema


def _add_error_handlers(app: FastAPI) -> None:
    async def invalid(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidRequest)
        return JSONResponse({"detail": exc.errors}, status_code=422)

    async def not_found(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, JobNotFound)
        return JSONResponse({"detail": f"no job {exc.job_id}"}, status_code=404)

    async def too_large(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=413)

    async def unavailable(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    async def redis_down(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the job store (Redis) did not answer ({type(exc).__name__}); retry shortly"},
            status_code=503, headers={"Retry-After": "5"})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code != 405:
            return await http_exception_handler(request, exc)
        # Starlette names only the first matching route's methods; a path served by several
        # routes (GET and POST /v1/webhooks/endpoints) allows all of theirs.
        path = request.url.path
        allowed = sorted({method.upper() for template, operations in request.app.openapi()["paths"].items()
                          if compile_path(template)[0].match(path) for method in operations})
        return JSONResponse({"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(allowed)})

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.add_exception_handler(BodyNotParsed, body_not_parsed)
    app.add_exception_handler(InvalidRequest, invalid)
    app.add_exception_handler(JobNotFound, not_found)
    app.add_exception_handler(PayloadTooLarge, too_large)
    app.add_exception_handler(Unavailable, unavailable)
    app.add_exception_handler(RedisError, redis_down)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the caller's ``stop`` event decides when to exit."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass


class _UntilBuilt:
    """The ASGI app ingest serves from its first second: while its clients are still connecting (a
    broker that is not up yet), ``/healthz`` is 200 and everything else 503 with ``Retry-After``;
    then every request goes to the real app."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope, receive, send) -> None:
        if self.app is not None:
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            response = JSONResponse({"status": "ok"})
        elif scope["path"] == "/readyz":
            response = JSONResponse({"status": "unavailable", "checks": {"startup": "connecting to Kafka"}},
                                    status_code=503)
        else:
            response = JSONResponse({"detail": "ingest is starting (connecting to Kafka); retry shortly"},
                                    status_code=503, headers={"Retry-After": "5"})
        await response(scope, receive, send)


async def serve(settings: IngestSettings, infra: Infra, stop: asyncio.Event) -> None:
    """Run the API on ``settings.host:port`` until ``stop`` is set; then drain (``infra`` closes the clients).

    It listens at once and answers 503 until its clients are connected (see ``_UntilBuilt``): a
    broker that is not up yet makes ingest not ready, never makes it exit.
    """
    app = _UntilBuilt()
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        log_config=None,  # keep the process's logging setup
        access_log=False,  # RequestLog writes one line per request, without keys or bodies
        lifespan="off",  # the clients are opened by build(), and closed by the bootstrap
        # Event streams stay open until their job ends: give them this long, then cut them
        # (clients reconnect with Last-Event-ID to another replica).
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    server = _Server(config)
    sock = workers.listening_socket(settings)
    siblings = await workers.start_siblings(settings)

    async def exit_on_stop() -> None:
        await stop.wait()
        server.should_exit = True

    async def open_when_built() -> None:
        try:
            app.app = await build(settings, infra)
            # Everything built so far lives as long as the process: out of the collector's sight, a
            # full collection scans only what requests left behind (over 100 ms here, once a few
            # seconds under load, without it).
            gc.freeze()
        except BaseException:
            server.should_exit = True  # a broken providers file, say: the error is raised below
            raise

    watcher = asyncio.create_task(exit_on_stop(), name="ingest-stop")
    builder = asyncio.create_task(open_when_built(), name="ingest-build")
    try:
        # Awaited here, not in a task: uvicorn calls sys.exit() when startup fails, and a
        # SystemExit escaping a task would end the whole event loop, not just this service.
        await server.serve(sockets=[sock])
    except SystemExit:
        raise RuntimeError(f"ingest could not listen on {settings.host}:{settings.port} (in use?); "
                           "see the log above") from None
    finally:
        await workers.stop_siblings(siblings)
        watcher.cancel()
        if not builder.done():
            builder.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        results = await asyncio.gather(builder, return_exceptions=True)
    if isinstance(results[0], Exception):
        raise results[0]
