"""A fake Replicate speaking its predictions API.

- Create: ``POST /v1/models/{owner}/{name}/predictions``, ``POST /v1/predictions`` (body names a
  ``version``) or ``POST /v1/deployments/{owner}/{name}/predictions``; ``{"input": {...}}``.
- ``Prefer: wait[=N]`` holds the create open until the prediction is done: here a prediction
  that needs no polls (``knobs.slow_start_polls == 0``) is answered ``succeeded`` at once,
  anything slower ``starting``, as Replicate does once the wait runs out.
- ``GET /v1/predictions/{id}`` advances ``starting → processing → succeeded`` over
  ``knobs.slow_start_polls`` polls; ``POST /v1/predictions/{id}/cancel`` cancels.
- Failures from ``FakeProvider.admit`` render in Replicate's error format
  (``{"title", "detail", "status"}``): 429 with ``Retry-After`` and "resets in ~Ns", 401
  ``Unauthenticated``, 402 insufficient credit ("quota"), 422 invalid input ("400"), 5xx;
  ``"error"`` makes the prediction itself end ``failed`` with an ``error`` text.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

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

PREDICTION_ERROR = "CUDA out of memory. Tried to allocate 2.00 GiB"


@dataclass
class _Prediction:
    id: str
    model: str
    version: str | None
    input: dict[str, Any]
    polls_left: int
    fails: bool
    status: str = "starting"
    output: Any = None
    error: str | None = None
    polls: int = 0
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    completed_at: str | None = None


def create_app(fake: FakeProvider | None = None, *, output_as_list: bool = True, retry_after_header: bool = True,
               echo_auth_in_errors: bool = False) -> FastAPI:
    """A fake Replicate.

    ``output_as_list``: ``output`` is ``[url]`` (most image models) rather than a bare URL.
    ``retry_after_header``: send ``Retry-After`` with 429s (else only the body says when).
    ``echo_auth_in_errors``: error texts repeat the Authorization header, the way a careless
    upstream might, so adapters can prove they never pass a token on.
    """
    fake = fake or FakeProvider("replicate")
    app = new_app(fake, "Replicate")
    predictions: dict[str, _Prediction] = {}

    def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"title": title, "detail": detail, "status": status}, status_code=status, headers=headers)

    def echo(request: Request) -> str:
        return echo_auth(request, echo_auth_in_errors)

    def render(injected: Injected, request: Request) -> Response:
        mode = injected.mode
        if mode == "malformed":  # a proxy's page where JSON was promised
            return truncated_json("<html><body>upstream connect error</body></html>", status_code=201)
        if mode == "429":
            seconds = math.ceil(injected.retry_after_s or 0)
            return problem(429, "Request was throttled", f"Request was throttled. Your rate limit resets in ~{seconds}s.",
                           throttle_headers(seconds) if retry_after_header else None)
        if mode == "401":
            return problem(401, "Unauthenticated", "Unauthenticated" + echo(request))
        if mode == "403":
            return problem(403, "Forbidden", "You do not have permission to run this model" + echo(request))
        if mode == "quota":
            return problem(402, "Insufficient credit", "You have insufficient credit to run this model.")
        if mode == "400":
            return problem(422, "Input validation failed",
                           "- input.width: Must be less than or equal to 1440" + echo(request))
        return problem(int(mode), "Internal server error", "Internal server error" + echo(request))

    def as_json(p: _Prediction, request: Request) -> dict[str, Any]:
        base = base_url(request)
        return {
            "id": p.id, "model": p.model, "version": p.version or "dp-" + uuid.uuid5(uuid.NAMESPACE_URL, p.model).hex,
            "input": p.input, "logs": "", "output": p.output, "data_removed": False, "error": p.error,
            "status": p.status, "created_at": p.created_at, "completed_at": p.completed_at,
            "urls": {"get": f"{base}/v1/predictions/{p.id}", "cancel": f"{base}/v1/predictions/{p.id}/cancel",
                     "web": f"https://replicate.com/p/{p.id}"},
        }

    def finish(p: _Prediction, request: Request) -> None:
        p.completed_at = datetime.now(UTC).isoformat()
        if p.fails:
            p.status, p.error = "failed", PREDICTION_ERROR + echo(request)
            return
        spec = p.input
        png = fake.image(str(spec.get("prompt") or ""), int_or(spec.get("width"), 1024),
                         int_or(spec.get("height"), 1024), int_or(spec.get("seed"), None))
        url = fake.file_url(request, png)
        p.status, p.output = "succeeded", [url] if output_as_list else url
        fake.charge(str(spec.get("prompt") or ""), p.id)

    def lookup(prediction_id: str, request: Request) -> _Prediction | None:
        """The prediction a poll or cancel names. Those are logged but never fail or count against limits."""
        fake.log(request, bearer_key(request))
        return predictions.get(prediction_id)

    async def create(request: Request, model: str, version: str | None = None) -> Response:
        key = bearer_key(request)
        if key is None:
            fake.log(request, None)
            return problem(401, "Unauthenticated", "You did not pass an authentication token")
        injected = await fake.admit(request, key)
        if injected is not None and injected.mode != "error":
            return render(injected, request)
        body = await json_object(request)
        if body is None:
            return problem(400, "Invalid JSON", "The request body is not a JSON object")
        if not isinstance(body.get("input"), dict):
            return problem(422, "Input validation failed", "- input: Invalid type. Expected: object")
        if not str(body["input"].get("prompt") or "").strip():
            return problem(422, "Input validation failed", "- input: prompt is required")
        if model == "" and not isinstance(body.get("version"), str):
            return problem(422, "Invalid version or not permitted", "- version is required")
        p = _Prediction(uuid.uuid4().hex[:26], model or "owner/model", version or body.get("version"), body["input"],
                        polls_left=fake.knobs.slow_start_polls, fails=injected is not None)
        predictions[p.id] = p
        if _prefers_wait(request.headers.get("prefer", "")) and p.polls_left == 0:
            finish(p, request)
        return JSONResponse(as_json(p, request), status_code=201)

    @app.post("/v1/models/{owner}/{name}/predictions")
    async def create_for_model(owner: str, name: str, request: Request) -> Response:
        return await create(request, f"{owner}/{name}")

    @app.post("/v1/predictions")
    async def create_for_version(request: Request) -> Response:
        return await create(request, "")

    @app.post("/v1/deployments/{owner}/{name}/predictions")
    async def create_for_deployment(owner: str, name: str, request: Request) -> Response:
        return await create(request, f"{owner}/{name}")

    @app.get("/v1/predictions/{prediction_id}")
    async def get(prediction_id: str, request: Request) -> Response:
        if (p := lookup(prediction_id, request)) is None:
            return problem(404, "Not found", "Not found.")
        p.polls += 1
        if p.status in ("starting", "processing"):
            if p.polls_left > 0:
                # the first poll still sees the model booting, later ones see it running
                p.status = "starting" if p.polls == 1 else "processing"
                p.polls_left -= 1
            else:
                finish(p, request)
        return JSONResponse(as_json(p, request))

    @app.post("/v1/predictions/{prediction_id}/cancel")
    async def cancel(prediction_id: str, request: Request) -> Response:
        if (p := lookup(prediction_id, request)) is None:
            return problem(404, "Not found", "Not found.")
        if p.status in ("starting", "processing"):
            p.status, p.completed_at = "canceled", datetime.now(UTC).isoformat()
        return JSONResponse(as_json(p, request))

    return app


def _prefers_wait(prefer: str) -> bool:
    """``Prefer: wait`` or ``Prefer: wait=N`` (other preferences may share the header)."""
    return any(part.strip().split("=", 1)[0].strip().lower() == "wait" for part in prefer.split(","))
