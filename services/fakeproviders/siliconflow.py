"""A fake SiliconFlow image API: ``POST /v1/images/generations`` as SiliconFlow speaks it.

Success bodies are ``{"images": [{"url"}], "timings": {"inference"}, "seed", ...}`` with the image
hosted by the fake (SiliconFlow's real URLs live about an hour, so clients must download at once).
Errors come in SiliconFlow's shapes: a JSON ``{"code", "message", "data"}`` body for most statuses,
and a plain-text body for 401.

Options of :func:`create_app`:

* ``echo_auth_in_errors`` — error bodies repeat the request's ``Authorization`` header. Real providers
  sometimes echo (part of) the key back; tests use this to prove adapters never pass it on.
"""

from __future__ import annotations

import random

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from services.fakeproviders.base import (
    FakeProvider,
    Injected,
    admitted_json,
    echo_auth,
    int_or,
    new_app,
    parse_size,
    throttle_headers,
    truncated_json,
)

#: (HTTP status, SiliconFlow code, message) per injected failure. Only the shape and 20012 (a 400) come from
#: SiliconFlow's docs; the other codes are illustrative. 401 answers plain text, so adapters must cope
#: with an error body that is not JSON.
FAILURES: dict[str, tuple[int, int, str]] = {
    "400": (400, 20012, "Model does not exist. Please check it carefully."),
    "403": (403, 30003, "Model disabled: your account has no permission to use this model."),
    "quota": (403, 30001, "Sorry, your account balance is insufficient"),
    "429": (429, 50603, "Request was rejected due to rate limiting. Details: IPM limit reached."),
    "500": (500, 50500, "Internal server error."),
    "502": (502, 50502, "Bad gateway."),
    "503": (503, 50603, "System is too busy now. Please try again later."),
    # SiliconFlow answers 504 when a generation overran its gateway: "overloaded, retry".
    "error": (504, 50604, "Gateway timeout: the model is overloaded, please try again later."),
}


def create_app(fake: FakeProvider | None = None, *, echo_auth_in_errors: bool = False) -> FastAPI:
    """The fake SiliconFlow server around ``fake`` (a fresh ``FakeProvider("siliconflow")`` by default)."""
    fake = fake or FakeProvider("siliconflow")
    app = new_app(fake, "SiliconFlow")

    def error(status: int, code: int, message: str, request: Request,
              headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"code": code, "message": message + echo_auth(request, echo_auth_in_errors), "data": None}
        return JSONResponse(body, status_code=status, headers=headers)

    def failure(injected: Injected, request: Request) -> Response:
        if injected.mode == "malformed":
            return truncated_json('{"images": [{"url": ')
        if injected.mode == "401":
            return PlainTextResponse("Invalid token" + echo_auth(request, echo_auth_in_errors), status_code=401)
        status, code, message = FAILURES.get(injected.mode, FAILURES["500"])
        seconds = injected.retry_after_s if status == 429 else None
        return error(status, code, message, request, throttle_headers(seconds))

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> Response:
        body = await admitted_json(fake, request, failure,
                                   lambda: error(400, 20015, "The parameter is invalid: body is not JSON.", request))
        if isinstance(body, Response):
            return body
        prompt, size = body.get("prompt"), body.get("image_size", "1024x1024")
        if not isinstance(prompt, str) or not prompt or not isinstance(body.get("model"), str):
            return error(400, 20015, "The parameter is invalid: model and prompt are required.", request)
        if (dimensions := parse_size(size)) is None:
            return error(400, 20015, f"The parameter is invalid: image_size {size!r}.", request)
        seed = int_or(body.get("seed"), None)
        url = fake.file_url(request, fake.image(prompt, *dimensions, seed=seed))
        fake.charge(prompt)
        # The real API reports the seed it used, picking one when the request had none.
        return JSONResponse({"images": [{"url": url}], "timings": {"inference": 0.05},
                             "seed": seed if seed is not None else random.randrange(2**32)})

    return app
