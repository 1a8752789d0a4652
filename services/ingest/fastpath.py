"""A cache hit this replica holds in memory, answered before FastAPI's routing and dependencies.

A repeated ``POST /v1/generations`` whose result sits in the process's LRU needs one Redis call
(the job's completed status), plus the admission check when its tenant has a bucket. Through
FastAPI that answer cost about four times the CPU of a bare endpoint doing a Redis ``GET``:
routing, the dependency graph (deps, caller, two key schemes, headers, limits), the route's
body handling. This middleware answers it with the route's own pieces instead:
``auth.resolve_caller``, ``limits.admit``, ``handlers.serve_or_queue``,
``routes.generation_response``, and the app's exception handlers for what they raise.

Everything it does not recognise as such a request goes on to the app unchanged, the body
replayed: an Idempotency-Key, a reference image, a webhook, a content type other than JSON, a
body that does not validate (the app answers its 400 or 422), a key that does not resolve (the
app's 401), a result that is not in this process's memory (the app reads Redis). The decision is
made before anything is spent or written, so a request the app ends up answering is admitted once.

It sits inside ``RequestLog``, ``BodyLimit`` and ``RateLimitHeaders``: the access log, request
metrics, request id, body limit and RateLimit headers of a fast answer are theirs, as for every
other request; with tracing on, the server span wraps it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from pydantic import TypeAdapter, ValidationError
from redis.exceptions import RedisError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.contracts import GenerationRequested, Tenant
from services.common.tenants import Caller
from services.ingest import handlers, routes
from services.ingest.api_models import GenerationRequestBody
from services.ingest.auth import presented_key, resolve_caller
from services.ingest.deps import IngestDeps
from services.ingest.errors import InvalidRequest
from services.ingest.limits import admit

PATH = "/v1/generations"

_TENANT: TypeAdapter[str] = TypeAdapter(Tenant)


@dataclass(frozen=True)
class _Headers:
    """The few request headers the decision needs, read once from the raw list (first value wins, as Starlette's)."""

    content_type: str | None
    idempotency_key: str | None
    authorization: str | None
    x_api_key: str | None
    x_forgeline_tenant: str | None

    @classmethod
    def of(cls, scope: Scope) -> _Headers:
        wanted = dict.fromkeys((b"content-type", b"idempotency-key", b"authorization", b"x-api-key",
                                b"x-forgeline-tenant"))
        for name, value in scope["headers"]:
            if name in wanted and wanted[name] is None:
                wanted[name] = value.decode("latin-1")
        return cls(*wanted.values())


class CacheHitFastPath:
    """ASGI middleware: ``POST /v1/generations`` answered from this process's result cache when it can be."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self._fastapi = fastapi
        self._route: BaseRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deps: IngestDeps | None = self._fastapi.state.deps
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH or deps is None:
            await self.app(scope, receive, send)
            return
        headers = _Headers.of(scope)
        if headers.idempotency_key is not None or not _is_json(headers.content_type):
            await self.app(scope, receive, send)
            return
        body, replay = await _read_body(receive)
        hit = await _from_memory(body, headers, deps) if body is not None else None
        if hit is None:
            await self.app(scope, replay, send)
            return
        await self._answer(hit, scope, replay, send)

    async def _answer(self, hit: _Hit, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit, complete the job from the cache and answer, as the route would; its exceptions as the app renders them."""
        deps: IngestDeps = self._fastapi.state.deps
        scope["route"] = self._generation_route()  # RequestLog's metric label, the route's template
        try:
            await admit(hit.caller, deps, scope)
            response = routes.generation_response(await handlers.serve_or_queue(hit.request, deps,
                                                                                cache_key=hit.cache_key))
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            response = await handler(Request(scope, receive), exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Callable | None:
        for kind in type(exc).__mro__:
            if kind in self._fastapi.exception_handlers:
                return self._fastapi.exception_handlers[kind]
        return None

    def _generation_route(self) -> BaseRoute | None:
        """The route this answer stands in for (``routes.router``'s; FastAPI keeps included routers whole)."""
        if self._route is None:
            self._route = next((route for route in routes.router.routes if getattr(route, "path", None) == PATH
                                and "POST" in getattr(route, "methods", ())), None)
        return self._route


@dataclass(frozen=True)
class _Hit:
    request: GenerationRequested
    caller: Caller
    cache_key: str


async def _from_memory(body: bytes, headers: _Headers, deps: IngestDeps) -> _Hit | None:
    """The request, when it is a plain one whose result this process holds; None: the app decides.

    Reads Redis only for a key's or tenant's first lookup in a while (``TenantStore`` keeps them).
    """
    parsed = _parsed_body(body)
    if parsed is None or parsed.reference_image is not None or parsed.webhook_url is not None:
        return None
    tenant_header = headers.x_forgeline_tenant
    if tenant_header is not None and not _valid_tenant(tenant_header):
        return None  # the app's 422 names the header
    try:
        caller = await resolve_caller(deps, presented_key(headers.authorization, headers.x_api_key), tenant_header)
    except RedisError:
        return None  # a key's lookup could not be read: the app answers, as it answers Redis being down
    if caller is None:
        return None  # the app's 401
    try:
        request = handlers.build_request(parsed, caller.tenant, None)
    except InvalidRequest:
        return None
    cache_key = deps.cache_scope.key(request.spec, request.tenant)
    if deps.cache.peek_local(cache_key) is None:
        return None
    return _Hit(request, caller, cache_key)


def _parsed_body(body: bytes) -> GenerationRequestBody | None:
    """The body as the route validates it (``json.loads`` then the model), or None for anything it would refuse."""
    try:
        return GenerationRequestBody.model_validate(json.loads(body.decode("utf-8", "strict")))
    except (UnicodeDecodeError, RecursionError, ValueError, ValidationError):  # JSONDecodeError is a ValueError
        return None


def _valid_tenant(value: str) -> bool:
    try:
        _TENANT.validate_python(value)
    except ValidationError:
        return False
    return True


def _is_json(content_type: str | None) -> bool:
    """``application/json`` (parameters allowed); others, and none, go to the app, which has its own rules for them."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == "application/json"


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole body (None if the client left before sending it), and a ``receive`` for the app
    that gives what was read again, then passes on to the client's."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: the app sees it as it would have
            pending: list[Message] = [message]
            body = None
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            body = b"".join(chunks)
            pending = [{"type": "http.request", "body": body, "more_body": False}]
            break
    if body is None and chunks:
        pending.insert(0, {"type": "http.request", "body": b"".join(chunks), "more_body": True})

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return body, replay
