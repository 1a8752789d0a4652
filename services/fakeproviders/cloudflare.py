"""A fake Cloudflare Workers AI: ``POST /client/v4/accounts/{account_id}/ai/run/{model}``.

Only ``@cf/black-forest-labs/flux-1-schnell`` is served; it answers the real envelope
``{"result": {"image": "<base64 JPEG>"}, "success": true, "errors": [], "messages": []}``.
Failures use Cloudflare's envelope too: ``success: false`` and ``errors: [{"code", "message"}]``,
with the codes Workers AI documents (3036 daily allocation used up, 3040 out of capacity,
3007 timeout, 5007 no such model, ...).

Options of :func:`create_app`:

* ``echo_auth_in_errors`` — error messages repeat the request's ``Authorization`` header (to prove
  adapters never pass a token on).
* ``failures`` — replace or add (HTTP status, Cloudflare code, message) for a fail mode, e.g.
  ``{"error": (408, 3007, "Request timeout")}`` to have the generic failure be a timeout.
"""

from __future__ import annotations

import base64

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from services.fakeproviders.base import (
    FakeProvider,
    Injected,
    bearer_key,
    echo_auth,
    int_or,
    json_object,
    new_app,
    throttle_headers,
    truncated_json,
)

MODELS = ("@cf/black-forest-labs/flux-1-schnell",)
MAX_PROMPT = 2048  # flux-1-schnell's input schema: prompt maxLength
MAX_STEPS = 8

Failure = tuple[int, int, str]

#: (HTTP status, Cloudflare error code, message) per injected failure, from the Workers AI error table.
FAILURES: dict[str, Failure] = {
    "400": (400, 3003, "Request is missing headers or body"),
    "401": (401, 10000, "Authentication error"),
    "403": (403, 3023, "Service unavailable for account"),
    "quota": (429, 3036, ("You have used up your daily free allocation of 10,000 neurons. Please upgrade to "
                          "Cloudflare's Workers Paid plan if you would like to continue usage.")),
    "429": (429, 971, "Please wait and consider throttling your request speed"),
    "error": (429, 3040, "No more data centers to forward the request to"),  # out of capacity
    "500": (500, 3043, "Internal server error"),
    "502": (502, 3043, "Bad gateway"),
    "503": (503, 3043, "Service unavailable"),
}


def create_app(fake: FakeProvider | None = None, *, echo_auth_in_errors: bool = False,
               failures: dict[str, Failure] | None = None) -> FastAPI:
    """The fake Workers AI server around ``fake`` (a fresh ``FakeProvider("cloudflare")`` by default)."""
    fake = fake or FakeProvider("cloudflare")
    table = FAILURES | (failures or {})
    app = new_app(fake, "Cloudflare Workers AI")

    def error(status: int, code: int, message: str, request: Request,
              headers: dict[str, str] | None = None) -> JSONResponse:
        errors = [{"code": code, "message": message + echo_auth(request, echo_auth_in_errors)}]
        body = {"result": None, "success": False, "errors": errors, "messages": []}
        return JSONResponse(body, status_code=status, headers=headers)

    def failure(injected: Injected, request: Request) -> Response:
        if injected.mode == "malformed":
            return truncated_json('{"result": {"image": "/9j/')
        status, code, message = table.get(injected.mode, table["500"])
        seconds = injected.retry_after_s if status == 429 and code != 3036 else None  # a daily quota has no retry
        return error(status, code, message, request, throttle_headers(seconds))

    @app.post("/client/v4/accounts/{account_id}/ai/run/{model:path}")
    async def run(account_id: str, model: str, request: Request) -> Response:
        injected = await fake.admit(request, bearer_key(request))
        if injected is not None:
            return failure(injected, request)
        if model not in MODELS:
            return error(400, 5007, f"No such model {model} or task", request)
        body = await json_object(request)
        if body is None:
            return error(400, 3003, "Request is missing headers or body: body is not JSON", request)
        prompt, steps, seed = body.get("prompt"), body.get("steps", 4), body.get("seed")
        if not isinstance(prompt, str) or not prompt:
            return error(400, 5006, "Error: required properties at '/' are 'prompt'", request)
        if len(prompt) > MAX_PROMPT:
            return error(400, 5006, f"Error: Length of '/prompt' must be <= {MAX_PROMPT}", request)
        if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            return error(400, 5006, f"Error: Value of '/steps' must be <= {MAX_STEPS}", request)
        # flux-1-schnell on Workers AI makes 1024x1024 JPEGs; the fake keeps them small.
        jpeg = fake.image(prompt, seed=int_or(seed, None), content_type="image/jpeg")
        return JSONResponse({"result": {"image": base64.b64encode(jpeg).decode()}, "success": True,
                             "errors": [], "messages": []})

    return app
