"""A fake OpenAI-compatible image API: ``POST /v1/images/generations``.

Success bodies are ``{"created", "data": [{"url" | "b64_json", "revised_prompt"}]}``, honouring
the request's ``response_format`` (URLs point at files the fake hosts). Errors use OpenAI's
``{"error": {"message", "type", "param", "code"}}`` body. A 429 is either a rate limit (with
``Retry-After`` and ``x-ratelimit-reset-requests`` headers) or ``insufficient_quota``, the same
status with the opposite meaning: waiting does not bring quota back.

Options of :func:`create_app`:

* ``echo_auth_in_errors`` — error messages repeat the request's ``Authorization`` header. (Real OpenAI
  401s quote a masked key: adapters must not pass provider messages on blindly.)
* ``retry_after_header`` — False leaves ``Retry-After`` off 429s, so only the
  ``x-ratelimit-reset-requests`` header says when to come back.
"""

from __future__ import annotations

import base64
import time

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from services.fakeproviders.base import (
    FakeProvider,
    Injected,
    admitted_json,
    echo_auth,
    new_app,
    parse_size,
    throttle_headers,
    truncated_json,
)

#: (HTTP status, message, type, code) per injected failure.
FAILURES: dict[str, tuple[int, str, str, str | None]] = {
    "400": (400, ("Your request was rejected as a result of our safety system. Your prompt may contain text "
                  "that is not allowed by our safety system."), "invalid_request_error", "content_policy_violation"),
    "401": (401, "Incorrect API key provided. You can find your API key at https://platform.openai.com/api-keys.",
            "invalid_request_error", "invalid_api_key"),
    "403": (403, "Project does not have access to this model.", "invalid_request_error", "model_not_found"),
    "quota": (429, "You exceeded your current quota, please check your plan and billing details.",
              "insufficient_quota", "insufficient_quota"),
    "429": (429, "Rate limit reached for images per minute. Please try again later.", "requests",
            "rate_limit_exceeded"),
    "500": (500, "The server had an error while processing your request. Sorry about that!", "server_error", None),
    "502": (502, "Bad gateway.", "server_error", None),
    "503": (503, "The engine is currently overloaded, please try again later.", "server_error", None),
    "error": (503, "The engine is currently overloaded, please try again later.", "server_error", None),
}


def create_app(fake: FakeProvider | None = None, *, echo_auth_in_errors: bool = False,
               retry_after_header: bool = True) -> FastAPI:
    """The fake OpenAI images server around ``fake`` (a fresh ``FakeProvider("openai")`` by default)."""
    fake = fake or FakeProvider("openai")
    app = new_app(fake, "OpenAI-compatible images")

    def error(status: int, message: str, type_: str, code: str | None, request: Request,
              headers: dict[str, str] | None = None) -> JSONResponse:
        message += echo_auth(request, echo_auth_in_errors)
        body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        return JSONResponse(body, status_code=status, headers=headers)

    def failure(injected: Injected, request: Request) -> Response:
        if injected.mode == "malformed":
            return truncated_json('{"created": 1, "data": [{"b64_')
        status, message, type_, code = FAILURES.get(injected.mode, FAILURES["500"])
        headers: dict[str, str] = {}
        if injected.mode == "429" and injected.retry_after_s:
            headers["x-ratelimit-reset-requests"] = _duration(injected.retry_after_s)
            if retry_after_header:
                headers |= throttle_headers(injected.retry_after_s)
        return error(status, message, type_, code, request, headers)

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> Response:
        body = await admitted_json(fake, request, failure, lambda: error(
            400, "We could not parse the JSON body of your request.", "invalid_request_error", None, request))
        if isinstance(body, Response):
            return body
        prompt, size = body.get("prompt"), body.get("size", "1024x1024")
        response_format, n = body.get("response_format", "url"), body.get("n", 1)
        if not isinstance(prompt, str) or not prompt:
            return error(400, "'prompt' is a required property", "invalid_request_error", None, request)
        if response_format not in ("url", "b64_json"):
            return error(400, f"'{response_format}' is not one of ['url', 'b64_json'] - 'response_format'",
                         "invalid_request_error", None, request)
        if (dimensions := parse_size(size)) is None:
            return error(400, f"'{size}' is not a valid size", "invalid_request_error", None, request)
        png = fake.image(prompt, *dimensions)
        items = []
        for _ in range(n if isinstance(n, int) and 1 <= n <= 10 else 1):
            item = {"revised_prompt": prompt}
            if response_format == "b64_json":
                item["b64_json"] = base64.b64encode(png).decode()
            else:
                item["url"] = fake.file_url(request, png)
            items.append(item)
        return JSONResponse({"created": int(time.time()), "data": items})

    return app


def _duration(seconds: float) -> str:
    """OpenAI's reset headers look like ``"20s"``, ``"1m3s"`` or ``"120ms"``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
