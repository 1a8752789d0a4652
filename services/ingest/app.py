"""The ingest process: an HTTP API in front of the ``generation.requested`` topic.

    forgeline run ingest

``create_app`` builds the FastAPI app around its dependencies (no module-level app or
clients); ``build_ingest`` opens those clients; ``serve`` runs uvicorn until ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from services.common.blobstore import S3BlobStore
from services.common.budget import RedisBudgetLedger, usd
from services.common.cache import LruTtlCache, RedisResultCache
from services.common.jobs import RedisJobStore
from services.common.redis import KeySpace
from services.common.settings import BudgetSettings, Connections
from services.common.topics import GroupIds, Topics
from services.common.worker import (
    redis_client,
    started_admin,
    started_consumer,
    started_producer,
)
from services.ingest.deps import IngestDeps, provider_handles
from services.ingest.errors import (
    InvalidRequest,
    JobNotFound,
    PayloadTooLarge,
    Unavailable,
)
from services.ingest.middleware import BodyLimit, RequestLog
from services.ingest.routes import router
from services.ingest.settings import IngestSettings
from services.providers.catalog import load_providers_file

DepsFactory = Callable[[], AbstractAsyncContextManager[IngestDeps]]

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
    {"name": "operations", "description": "Health, readiness, metrics and pipeline status."},
]


@asynccontextmanager
async def build_ingest(settings: IngestSettings, connections: Connections, *,
                       environ: Mapping[str, str] | None = None,
                       budget: BudgetSettings | None = None) -> AsyncIterator[IngestDeps]:
    """Open every client the API uses; they close in reverse order on exit, whatever happens.

    ``environ``: where the providers file's ``keys_env`` variables are read (None: none are, so
    /v1/status lists no keys). ``budget``: the monthly cap (None: read from ``FORGELINE_BUDGET_*``).
    """
    # Read before any client opens: a broken providers file fails the start with the file's problem.
    catalog = load_providers_file(settings.providers_file) if settings.providers_file is not None else None
    budget = budget or BudgetSettings()
    async with AsyncExitStack() as stack:
        producer = await started_producer(stack, connections.kafka)
        admin = await started_admin(stack, connections.kafka)
        offsets = await started_consumer(stack, connections.kafka, group_id=None)
        redis = redis_client(stack, connections.redis)
        keys = KeySpace(connections.redis.key_prefix)
        yield IngestDeps(
            settings=settings,
            connections=connections,
            topics=Topics.from_settings(connections.topics),
            groups=GroupIds.from_settings(connections.topics),
            keys=keys,
            producer=producer,
            admin=admin,
            offsets=offsets,
            redis=redis,
            jobs=RedisJobStore(redis, keys, ttl_s=settings.status_ttl_s),
            cache=RedisResultCache(redis, keys, ttl_s=_CACHE_WRITE_TTL_S,
                              local=LruTtlCache(settings.local_cache_size, settings.local_cache_ttl_s)),
            budget=RedisBudgetLedger(redis, keys, cap_micros=usd(budget.cap_usd),
                                reservation_ttl_s=budget.reservation_ttl_s),
            providers=provider_handles(catalog, redis, keys, environ or {}),
            blobs=S3BlobStore(connections.s3),
        )


def create_app(deps: IngestDeps | DepsFactory) -> FastAPI:
    """The API around ready ``deps`` (tests), or a factory its lifespan enters and exits (``serve``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if isinstance(deps, IngestDeps):
            yield
            return
        async with deps() as built:
            app.state.deps = built
            yield

    app = FastAPI(
        title="Forgeline ingest API",
        version="1.0.0",
        summary="Image generation for game backends.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    if isinstance(deps, IngestDeps):
        app.state.deps = deps  # also without a lifespan run (httpx.ASGITransport runs none)
    app.include_router(router)
    _add_error_handlers(app)
    # Last added is outermost: the log sees the final status, including the limit's 413.
    app.add_middleware(BodyLimit, limit=lambda path: app.state.deps.settings.body_limit(path))
    app.add_middleware(RequestLog)
    return app


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


async def serve(settings: IngestSettings, connections: Connections, stop: asyncio.Event,
                environ: Mapping[str, str] | None = None, budget: BudgetSettings | None = None) -> None:
    """Run the API on ``settings.host:port`` until ``stop`` is set; then drain and close every client.

    ``environ``: the provider keys' variables for /v1/status (pass ``dict(os.environ)``); ``budget``:
    as in ``build_ingest``.
    """
    failures: list[BaseException] = []

    @asynccontextmanager
    async def deps() -> AsyncIterator[IngestDeps]:
        async with AsyncExitStack() as stack:
            try:
                built = await stack.enter_async_context(
                    build_ingest(settings, connections, environ=environ, budget=budget))
            except Exception as exc:
                failures.append(exc)  # uvicorn only logs a lifespan failure; we re-raise it below
                raise
            yield built

    config = uvicorn.Config(
        create_app(deps), host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        log_config=None,  # keep the process's logging setup
        access_log=False,  # RequestLog writes one line per request, without keys or bodies
        lifespan="on",
        # Event streams stay open until their job ends: give them this long, then cut them
        # (clients reconnect with Last-Event-ID to another replica).
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    server = _Server(config)

    async def exit_on_stop() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(exit_on_stop(), name="ingest-stop")
    try:
        # Awaited here, not in a task: uvicorn calls sys.exit() when startup fails, and a
        # SystemExit escaping a task would end the whole event loop, not just this service.
        await server.serve()
    except SystemExit:
        if failures:
            raise failures[0] from None
        raise RuntimeError(f"ingest could not listen on {settings.host}:{settings.port} (in use?); "
                           "see the log above") from None
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
