"""A fake Hugging Face Space speaking Gradio's HTTP API (``/gradio_api/call/...``, SSE results).

Protocol, as a real Space serves it:

1. ``POST {base}/gradio_api/call/{api_name}`` with ``{"data": [inputs in order]}`` → ``{"event_id"}``.
2. ``GET {base}/gradio_api/call/{api_name}/{event_id}`` → ``text/event-stream`` of
   ``event: heartbeat | generating | complete | error`` each with a ``data:`` JSON line.
   ``complete`` carries the output list; an image is a FileData dict whose ``url`` serves it.

Gradio 4 servers have the same routes without the ``/gradio_api`` prefix; ``gradio4=True`` serves
only those, so an adapter's fallback is exercised. Failures from ``FakeProvider.admit`` render the
way a Space shows them: HTTP errors on the POST (429, 5xx, 401…), while ``"error"`` and ``"quota"``
(ZeroGPU out of quota) arrive later as ``event: error`` in the stream.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from services.fakeproviders.base import (
    FakeProvider,
    Injected,
    base_url,
    bearer_key,
    echo_auth,
    int_or,
    json_object,
    new_app,
    throttle_headers,
    truncated_json,
)

DEFAULT_INPUTS = ("prompt", "negative_prompt", "seed", "width", "height")
ZERO_GPU_QUOTA = "You have exceeded your GPU quota (60s requested vs. 0s left). Try again in 0:59:00"
SPACE_ERROR = "Error: the Space's worker crashed (CUDA out of memory)"


@dataclass
class _Event:
    """One queued call, kept until its result stream is read."""

    api_name: str
    data: list[Any]
    failure: str | None  # text of the event: error the stream ends with, if any
    created: float = field(default_factory=time.time)


def create_app(fake: FakeProvider | None = None, *, gradio4: bool = False, api_names: tuple[str, ...] = ("predict",),
               inputs: tuple[str, ...] = DEFAULT_INPUTS, heartbeats: int = 1, heartbeat_interval_s: float = 0.0,
               relative_urls: bool = False, echo_auth_in_errors: bool = False) -> FastAPI:
    """A fake Space.

    ``inputs``: which ImageSpec field each position of ``data`` holds (other names are ignored).
    ``heartbeats``/``heartbeat_interval_s``: heartbeat events sent, and the gap between them,
    before the result. ``relative_urls``: FileData ``url`` relative to the server (some proxies do
    that). ``echo_auth_in_errors``: error texts repeat the Authorization header, the way a careless
    upstream might, so adapters can prove they never pass a token on.
    """
    fake = fake or FakeProvider("gradio")
    app = new_app(fake, "Gradio Space")
    events: dict[str, _Event] = {}
    prefixes = ("",) if gradio4 else ("/gradio_api", "")

    def http_error(injected: Injected, request: Request) -> Response:
        if injected.mode == "malformed":  # a proxy's page where JSON was promised
            return truncated_json("<html><body>502 Bad Gateway</body></html>")
        status = int(injected.mode)  # "timeout" already became "503" in admit(); "error"/"quota" go to the stream
        headers = throttle_headers(injected.retry_after_s) if status == 429 else {}
        reasons = {
            400: "Invalid input: expected 5 inputs",
            401: "Invalid credentials in Authorization header",
            403: "You don't have access to this Space",
            429: "Too many requests for this Space, please slow down",
        }
        reason = reasons.get(status, "Space is unavailable") + echo_auth(request, echo_auth_in_errors)
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    async def call(api_name: str, request: Request) -> Response:
        injected = await fake.admit(request, bearer_key(request))
        failure: str | None = None
        if injected is not None:
            if injected.mode in ("error", "quota"):
                text = ZERO_GPU_QUOTA if injected.mode == "quota" else SPACE_ERROR
                failure = text + echo_auth(request, echo_auth_in_errors)
            else:
                return http_error(injected, request)
        if api_name not in api_names:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        body = await json_object(request)
        if body is None:
            return JSONResponse({"detail": "body is not JSON"}, status_code=422)
        data = body.get("data")
        if not isinstance(data, list):
            return JSONResponse({"detail": [{"loc": ["body", "data"], "msg": "field required"}]}, status_code=422)
        event_id = uuid.uuid4().hex
        events[event_id] = _Event(api_name, data, failure)
        return JSONResponse({"event_id": event_id})

    async def result(api_name: str, event_id: str, request: Request) -> Response:
        fake.log(request, bearer_key(request))
        event = events.pop(event_id, None)
        if event is None or event.api_name != api_name:
            return JSONResponse({"detail": "Event not found"}, status_code=404)
        return StreamingResponse(stream(event, base_url(request)), media_type="text/event-stream")

    async def stream(event: _Event, base: str) -> AsyncIterator[str]:
        for i in range(heartbeats):
            if i:
                await asyncio.sleep(heartbeat_interval_s)
            yield "event: heartbeat\ndata: null\n\n"
        if heartbeats:
            await asyncio.sleep(heartbeat_interval_s)
        if event.failure is not None:
            yield f"event: error\ndata: {json.dumps(event.failure)}\n\n"
            return
        spec = _spec_from(event.data, inputs)
        seed = int_or(spec.get("seed"), None)
        yield f"event: generating\ndata: {json.dumps([None, seed or 0])}\n\n"
        png = fake.image(str(spec.get("prompt") or ""), int_or(spec.get("width"), 512), int_or(spec.get("height"), 512),
                         seed)
        path = fake.host(png, "image/png", "png")
        file_data = {"path": f"/tmp/gradio/{path.rsplit('/', 1)[-1]}", "url": path if relative_urls else base + path,
                     "size": len(png), "orig_name": "image.png", "mime_type": None, "is_stream": False,
                     "meta": {"_type": "gradio.FileData"}}
        yield f"event: complete\ndata: {json.dumps([file_data, seed or 0])}\n\n"

    for prefix in prefixes:
        app.add_api_route(f"{prefix}/call/{{api_name}}", call, methods=["POST"])
        app.add_api_route(f"{prefix}/call/{{api_name}}/{{event_id}}", result, methods=["GET"])
    return app


def _spec_from(data: list[Any], inputs: tuple[str, ...]) -> dict[str, Any]:
    return {name: value for name, value in zip(inputs, data, strict=False)}
