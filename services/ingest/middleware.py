"""ASGI middleware: the request body limit, and one access-log line plus metrics per request.

Plain ASGI (not ``BaseHTTPMiddleware``) so streamed responses (server-sent events) pass through
untouched and the body limit sees every chunk as it arrives.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from prometheus_client import Counter, Histogram
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("forgeline.ingest.access")

REQUESTS = Counter("forgeline_ingest_requests_total", "HTTP requests by route and status.",
                   ["method", "route", "status"])
REQUEST_SECONDS = Histogram("forgeline_ingest_request_seconds", "HTTP request duration by route.",
                            ["method", "route"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once the body passes the limit; FastAPI renders it as a 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=_too_large_message(limit))


def _too_large_message(limit: int) -> str:
    return (f"request body is larger than the limit of {limit} bytes; send a smaller body "
            "(e.g. a reference_image as an https:// URL instead of a data: URL)")


async def _send_too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": _too_large_message(limit)}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for a body over ``limit(path)`` bytes: at once from Content-Length, else while reading a chunked body."""

    def __init__(self, app: ASGIApp, limit: Callable[[str], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_too_large(send, limit)
            return

        received = 0
        exceeded = started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                # Whatever the app made of BodyTooLarge (a 413, or a 400 "error parsing the body"
                # in some FastAPI versions), the client gets our 413, once.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _send_too_large(send, limit)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if started:
                raise
            started = True
            await _send_too_large(send, limit)


class RequestLog:
    """One log line per request (method, path, status, ms, request id) and the request metrics.

    Never logs bodies, query strings or headers: they may carry API keys or 14 MB images.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        status = 500  # what the client gets if the app raises before answering
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"  # the template: no job ids as labels
            method = scope["method"]
            REQUESTS.labels(method, route, str(status)).inc()
            REQUEST_SECONDS.labels(method, route).observe(elapsed)
            # Escaped and cut: a path is client input, and must not forge log lines.
            path = scope["path"].encode("unicode_escape").decode()[:200]
            access_log.info("%s %s %d %.1fms request_id=%s", method, path, status, elapsed * 1000, request_id)
