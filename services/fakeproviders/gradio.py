"""A fake Hugging Face Space speaking Gradio's queue protocol the way real Gradio 4, 5 and 6 do.

What it serves follows what real ``gradio`` servers answered (``tests/e2e/test_gradio_real.py``
runs the adapter against 4.44.1, 5.50.0 and 6.31.0):

* ``GET /config``: ``version``, ``api_prefix`` (``/gradio_api`` from 5 on; absent on 4),
  ``protocol: sse_v3``, ``components`` (labels, slider ranges, defaults) and ``dependencies``
  (``api_name``, input ids, ``id`` = ``fn_index``).
* ``POST {prefix}/queue/join`` ``{"data", "fn_index", "session_hash"}`` → ``{"event_id"}``
  (400 "Session hash not found." without one).
* ``GET {prefix}/queue/data?session_hash=…``: ``data: {"msg": …}`` lines: ``estimation``,
  ``process_starts``, ``heartbeat``, ``process_completed`` (``success``, ``output.data`` or
  ``output.error``), ``close_stream``. Gradio 4 sends a ``gr.Error`` text as its repr
  (``'…'``); Gradio 6 refuses a number beyond its slider ("Value … is greater than maximum
  value …") where 4 and 5 pass it to the function.
* ``GET {prefix}/file=<path>``: the output files.

Failures from ``FakeProvider.admit`` render the way a Space shows them: HTTP errors on the join
(429, 5xx, 401…), while ``"error"`` and ``"quota"`` (ZeroGPU out of quota) arrive as a failed
``process_completed`` with the text.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
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

DEFAULT_INPUTS = ("prompt", "negative_prompt", "seed", "randomize_seed", "width", "height")
VERSIONS = ("4.44.1", "5.50.0", "6.31.0")
ZERO_GPU_QUOTA = "You have exceeded your GPU quota (60s requested vs. 0s left). Try again in 0:59:00"
SPACE_ERROR = "The Space's worker crashed (CUDA out of memory)"
REFUSAL = "NSFW content detected. Please try again with a different prompt."  # for prompts with "forbidden"
SEED_MAX = 2**31 - 1
# label, component type, props: what a FLUX-style Space declares for each input
_COMPONENTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "prompt": ("Prompt", "textbox", {"value": ""}),
    "negative_prompt": ("Negative prompt", "textbox", {"value": ""}),
    "seed": ("Seed", "slider", {"minimum": 0, "maximum": SEED_MAX, "step": 1, "value": 0}),
    "randomize_seed": ("Randomize seed", "checkbox", {"value": True}),
    "width": ("Width", "slider", {"minimum": 64, "maximum": 2048, "step": 8, "value": 512}),
    "height": ("Height", "slider", {"minimum": 64, "maximum": 2048, "step": 8, "value": 512}),
    "style": ("Style", "dropdown", {"value": ""}),
}


@dataclass
class _Event:
    """One queued call, kept until its session's stream is read."""

    event_id: str
    data: list[Any]
    failure: str | None  # the error text its process_completed carries, if it fails


def create_app(fake: FakeProvider | None = None, *, version: str = "5.50.0", api_names: tuple[str, ...] = ("predict",),
               inputs: tuple[str, ...] = DEFAULT_INPUTS, heartbeats: int = 1, heartbeat_interval_s: float = 0.0,
               wrong_file_urls: bool = False, echo_auth_in_errors: bool = False) -> FastAPI:
    """A fake Space running Gradio ``version``.

    ``inputs``: which ImageSpec field each input holds (other names are plain textboxes labelled
    with the name). ``heartbeats``/``heartbeat_interval_s``: heartbeat messages sent, and the gap
    between them, before the result. ``wrong_file_urls``: FileData ``url`` on a path the server does
    not serve (Gradio 4.44's ``/c/file=`` on ``/call``), so adapters must not trust it.
    ``echo_auth_in_errors``: error texts repeat the Authorization header, the way a careless
    upstream might, so adapters can prove they never pass a token on.
    """
    fake = fake or FakeProvider("gradio")
    app = new_app(fake, "Gradio Space")
    major = int(version.split(".")[0])
    prefix = "/gradio_api" if major >= 5 else ""
    sessions: dict[str, _Event] = {}
    files: dict[str, bytes] = {}
    config = _config(version, prefix, api_names, inputs)

    def http_error(injected: Injected, request: Request) -> Response:
        if injected.mode == "malformed":  # a proxy's page where JSON was promised
            return truncated_json("<html><body>502 Bad Gateway</body></html>")
        status = int(injected.mode)  # "timeout" already became "503" in admit(); "error"/"quota" go to the stream
        headers = throttle_headers(injected.retry_after_s) if status == 429 else {}
        reasons = {
            400: "Invalid input",
            401: "Invalid credentials in Authorization header",
            403: "You don't have access to this Space",
            429: "Too many requests for this Space, please slow down",
        }
        reason = reasons.get(status, "Space is unavailable") + echo_auth(request, echo_auth_in_errors)
        return JSONResponse({"detail": reason}, status_code=status, headers=headers)

    async def get_config(request: Request) -> Response:
        fake.log(request, bearer_key(request))
        if fake.knobs.accepted_keys is not None and bearer_key(request) not in fake.knobs.accepted_keys:
            return JSONResponse({"detail": "Not authenticated"}, status_code=401)
        return JSONResponse(config | {"root": base_url(request)})

    async def join(request: Request) -> Response:
        injected = await fake.admit(request, bearer_key(request))
        failure: str | None = None
        if injected is not None:
            if injected.mode not in ("error", "quota"):
                return http_error(injected, request)
            failure = (ZERO_GPU_QUOTA if injected.mode == "quota" else SPACE_ERROR) + echo_auth(
                request, echo_auth_in_errors)
        body = await json_object(request)
        if body is None or not isinstance(body.get("data"), list):
            return JSONResponse({"detail": [{"loc": ["body", "data"], "msg": "field required"}]}, status_code=422)
        if not body.get("session_hash"):
            return JSONResponse({"detail": "Session hash not found."}, status_code=400)
        if int_or(body.get("fn_index"), -1) not in range(len(api_names)):
            return Response("Internal Server Error", status_code=500, media_type="text/plain")
        failure = failure or _refusal(body["data"], inputs, major)
        if failure is None and "forbidden" in str(dict(zip(inputs, body["data"], strict=False)).get("prompt")):
            failure = REFUSAL
        event = _Event(uuid.uuid4().hex, body["data"], failure)
        sessions[str(body["session_hash"])] = event
        return JSONResponse({"event_id": event.event_id})

    async def queue_data(request: Request, session_hash: str = "") -> Response:
        fake.log(request, bearer_key(request))
        event = sessions.pop(session_hash, None)
        if event is None:
            return JSONResponse({"detail": "Session not found."}, status_code=404)
        return StreamingResponse(stream(event, base_url(request)), media_type="text/event-stream")

    async def stream(event: _Event, base: str) -> AsyncIterator[str]:
        yield _sse({"msg": "estimation", "event_id": event.event_id, "rank": 0, "queue_size": 1, "rank_eta": None})
        yield _sse({"msg": "process_starts", "event_id": event.event_id, "eta": None})
        for i in range(heartbeats):
            if i:
                await asyncio.sleep(heartbeat_interval_s)
            yield _sse({"msg": "heartbeat"})
        if heartbeats:
            await asyncio.sleep(heartbeat_interval_s)
        yield _sse({"msg": "process_completed", "event_id": event.event_id, **_outcome(event, base)})
        yield _sse({"msg": "close_stream", "event_id": None})

    def _outcome(event: _Event, base: str) -> dict[str, Any]:
        if event.failure is not None:
            text = repr(event.failure) if major == 4 else event.failure  # Gradio 4 quotes gr.Error texts
            return {"output": {"error": text, "duration": 10, "visible": True}, "success": False}
        spec = {name: value for name, value in zip(inputs, event.data, strict=False)}
        seed = int_or(spec.get("seed"), None)
        png = fake.image(str(spec.get("prompt") or ""), int_or(spec.get("width"), 512),
                         int_or(spec.get("height"), 512), seed)
        path = f"/tmp/gradio/{uuid.uuid4().hex}/image.png"
        files[path] = png
        url = f"{base}/c/file={path}" if wrong_file_urls else f"{base}{prefix}/file={path}"
        file_data = {"path": path, "url": url, "size": None, "orig_name": "image.png", "mime_type": None,
                     "is_stream": False, "meta": {"_type": "gradio.FileData"}}
        return {"output": {"data": [file_data, seed or 0], "is_generating": False}, "success": True}

    async def file(path: str) -> Response:
        if path not in files:
            return JSONResponse({"detail": "File not found"}, status_code=404)
        return Response(files[path], media_type="image/png")

    app.add_api_route("/config", get_config, methods=["GET"])
    app.add_api_route(f"{prefix}/queue/join", join, methods=["POST"])
    app.add_api_route(f"{prefix}/queue/data", queue_data, methods=["GET"])
    app.add_api_route(f"{prefix}/file={{path:path}}", file, methods=["GET"])
    return app


def _config(version: str, prefix: str, api_names: tuple[str, ...], inputs: tuple[str, ...]) -> dict[str, Any]:
    components = []
    for i, name in enumerate(inputs, start=1):
        label, kind, props = _COMPONENTS.get(name, (name, "textbox", {"value": ""}))
        components.append({"id": i, "type": kind, "props": {"label": label, **props}})
    dependencies = [{"id": n, "api_name": api_name, "inputs": list(range(1, len(inputs) + 1)), "outputs": [],
                     "queue": True, "backend_fn": True} for n, api_name in enumerate(api_names)]
    config = {"version": version, "mode": "blocks", "protocol": "sse_v3", "components": components,
              "dependencies": dependencies}
    return config | ({"api_prefix": prefix} if prefix else {})


def _refusal(data: list[Any], inputs: tuple[str, ...], major: int) -> str | None:
    """What Gradio 6 says about inputs it refuses before calling the function (4 and 5 pass them on)."""
    if major < 6:
        return None
    if len(data) < len(inputs):
        return (f"An event handler didn't receive enough input values (needed: {len(inputs)}, got: {len(data)}).")
    for name, value in zip(inputs, data, strict=False):
        props = _COMPONENTS.get(name, ("", "", {}))[2]
        if isinstance(value, int | float) and "maximum" in props and value > props["maximum"]:
            return f"Value {value} is greater than maximum value {props['maximum']}."
    return None


def _sse(message: dict[str, Any]) -> str:
    return f"data: {json.dumps(message)}\n\n"
