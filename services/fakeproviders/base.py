"""What every fake provider server shares: knobs, a request log, injected failures, file hosting.

A fake speaks one provider's real HTTP protocol on loopback so adapters, the pipeline and users'
own tests can run without the provider. Each fake is a FastAPI app built around one
``FakeProvider``; its behaviour is set by ``Knobs`` — at construction, or at run time with
``POST /_fake/knobs`` (a seeded storm of failures: ``fail_rates``) — every request it saw is
listed by ``GET /_fake/requests``, and every image a paid fake delivered (what the provider would
bill) by ``GET /_fake/charges``.

Keys: a fake accepts any bearer token unless ``Knobs.accepted_keys`` is set. The request log
stores a fingerprint of the key (``fingerprint``), never the key itself.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import math
import random
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from PIL import Image
from pydantic import BaseModel, Field, ValidationError, field_validator

from services.common.contracts import ImageSpec
from services.providers.procedural import render_icon

FailMode = Literal["429", "400", "401", "403", "quota", "500", "502", "503", "timeout", "malformed", "error"]


def fingerprint(key: str | None) -> str | None:
    """How the request log names a key: enough to tell keys apart, useless to an attacker."""
    return hashlib.sha256(key.encode()).hexdigest()[:12] if key else None


class Knobs(BaseModel):
    """How a fake behaves. Every field can be changed at run time with ``POST /_fake/knobs``."""

    latency_s: float = Field(0.0, ge=0, description="Added to every generation request.")
    fail_next: list[FailMode] = Field(default_factory=list, description="Failures to inject, one per request, in order.")
    always_fail: FailMode | None = Field(None, description="Fail every generation request this way.")
    retry_after_s: float = Field(30.0, ge=0, description="Retry-After sent with 429s.")
    timeout_s: float = Field(300.0, ge=0, description="How long a 'timeout' failure hangs before answering.")
    rate_limit_per_key: int | None = Field(None, ge=1, description="Requests per key per window; more get 429.")
    rate_limit_window_s: float = Field(1.0, gt=0)
    accepted_keys: list[str] | None = Field(None, description="None: any bearer token; else only these.")
    rejected_keys: dict[str, FailMode] = Field(default_factory=dict,
                                               description="Key → failure for that key only (401, 403, quota…).")
    slow_start_polls: int = Field(0, ge=0, description="Replicate: polls that still say starting/processing.")
    fail_rates: dict[FailMode, float] = Field(
        default_factory=dict, description="A storm: each generation request fails this way with this probability "
                                          "(after fail_next and always_fail), e.g. {\"429\": 0.3, \"503\": 0.1}.")
    fail_seed: int | None = Field(None, description="Seeds the storm's draws, so a run can be repeated.")

    @field_validator("fail_rates")
    @classmethod
    def _rates_are_probabilities(cls, rates: dict[FailMode, float]) -> dict[FailMode, float]:
        if any(rate < 0 for rate in rates.values()) or sum(rates.values()) > 1:
            raise ValueError("fail_rates are probabilities: each at least 0, together at most 1")
        return rates


@dataclass(frozen=True)
class LoggedRequest:
    at: float  # time.time() when it arrived
    method: str
    path: str
    key: str | None  # fingerprint(key)


@dataclass(frozen=True)
class Charge:
    """A generation the real provider would bill: what a test holds against the budget ledger."""

    at: float  # time.time() when the image was delivered
    prompt: str
    ref: str | None  # the provider's id for the call (a Replicate prediction id), when it has one


@dataclass(frozen=True)
class Injected:
    """A failure the fake decided to answer with; each protocol renders it in its own error format."""

    mode: FailMode
    retry_after_s: float | None = None


@functools.lru_cache(maxsize=256)
def _rendered(prompt: str, width: int, height: int, seed: int | None) -> bytes:
    """Rendered once per prompt and size: a fake answering thousands of calls at once spends no time drawing."""
    return render_icon(ImageSpec(prompt=prompt, width=width, height=height, seed=seed))


class FakeProvider:
    """State one fake server keeps: its knobs, the requests it saw, per-key rate windows, files."""

    def __init__(self, name: str, knobs: Knobs | None = None) -> None:
        self.name = name
        self.knobs = knobs or Knobs()
        self.requests: list[LoggedRequest] = []
        self.charges: list[Charge] = []
        self._random = random.Random(self.knobs.fail_seed)
        self._windows: dict[str, deque[float]] = defaultdict(deque)
        self._files: dict[str, tuple[bytes, str]] = {}

    # -- the per-request gate every generation endpoint calls first

    async def admit(self, request: Request, key: str | None) -> Injected | None:
        """Log the request, apply latency, and decide whether it fails (None: serve it)."""
        self.log(request, key)
        knobs = self.knobs
        if knobs.accepted_keys is not None and key not in knobs.accepted_keys:
            return Injected("401")
        if key is not None and key in knobs.rejected_keys:
            return Injected(knobs.rejected_keys[key], knobs.retry_after_s)
        if knobs.rate_limit_per_key is not None and key is not None and self._over_rate(key):
            return Injected("429", knobs.rate_limit_window_s)
        if knobs.latency_s:
            await asyncio.sleep(knobs.latency_s)
        mode = knobs.fail_next.pop(0) if knobs.fail_next else knobs.always_fail or self._storm()
        if mode == "timeout":
            await asyncio.sleep(knobs.timeout_s)
            return Injected("503")
        return Injected(mode, knobs.retry_after_s) if mode is not None else None

    def _storm(self) -> FailMode | None:
        """A failure drawn from ``knobs.fail_rates``, or None (serve it)."""
        draw = self._random.random()
        for mode, rate in self.knobs.fail_rates.items():
            if draw < rate:
                return mode
            draw -= rate
        return None

    def charge(self, prompt: str, ref: str | None = None) -> None:
        """Record a delivered, billable generation (paid fakes call it; ``GET /_fake/charges`` lists them)."""
        self.charges.append(Charge(time.time(), prompt, ref))

    def log(self, request: Request, key: str | None) -> None:
        """Add a request to the log without ``admit``: polls and result streams never fail or count."""
        self.requests.append(LoggedRequest(time.time(), request.method, request.url.path, fingerprint(key)))

    def _over_rate(self, key: str) -> bool:
        now = time.monotonic()
        window = self._windows[key]
        while window and now - window[0] >= self.knobs.rate_limit_window_s:
            window.popleft()
        window.append(now)
        return len(window) > (self.knobs.rate_limit_per_key or 0)

    # -- images and the files that carry them

    def image(self, prompt: str, width: int = 512, height: int = 512, seed: int | None = None,
              content_type: str = "image/png") -> bytes:
        """A deterministic image for the prompt (the procedural provider's), as PNG or JPEG."""
        png = _rendered(prompt[:2000] or "empty", _dimension(width), _dimension(height), seed)
        if content_type == "image/png":
            return png
        buffer = io.BytesIO()
        Image.open(io.BytesIO(png)).convert("RGB").save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    def host(self, data: bytes, content_type: str, suffix: str) -> str:
        """Keep ``data`` and return the path that serves it (``/files/<id>.<suffix>``)."""
        file_id = f"{uuid.uuid4().hex}.{suffix}"
        self._files[file_id] = (data, content_type)
        return f"/files/{file_id}"

    def file_url(self, request: Request, data: bytes, content_type: str = "image/png", suffix: str = "png") -> str:
        """Keep ``data`` and return the absolute URL that serves it, on the host the request came to."""
        return base_url(request) + self.host(data, content_type, suffix)

    # -- routes every fake has

    def routes(self) -> APIRouter:
        router = APIRouter()

        @router.get("/files/{file_id}")
        async def file(file_id: str) -> Response:
            if file_id not in self._files:
                raise HTTPException(404, "no such file (outputs are kept in memory only)")
            data, content_type = self._files[file_id]
            return Response(data, media_type=content_type)

        @router.get("/_fake/requests")
        async def requests() -> list[dict]:
            return [r.__dict__ for r in self.requests]

        @router.get("/_fake/charges")
        async def charges() -> list[dict]:
            return [c.__dict__ for c in self.charges]

        @router.post("/_fake/knobs")
        async def set_knobs(update: dict) -> Knobs:
            try:
                knobs = Knobs.model_validate(self.knobs.model_dump() | update)  # the merged whole is validated
            except ValidationError as exc:
                raise HTTPException(422, exc.errors(include_url=False, include_context=False, include_input=False)) from None
            self.knobs = knobs
            if "fail_seed" in update:
                self._random.seed(knobs.fail_seed)
            return self.knobs

        @router.post("/_fake/reset")
        async def reset() -> Knobs:
            self.knobs, self.requests, self.charges = Knobs(), [], []
            self._windows.clear()
            return self.knobs

        return router


def bearer_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() or None if header.lower().startswith("bearer ") else None


def base_url(request: Request) -> str:
    """Scheme, host and port the request came to, without a trailing slash."""
    return str(request.base_url).rstrip("/")


def echo_auth(request: Request, enabled: bool) -> str:
    """`` (Authorization: <header>)`` when ``enabled``, else nothing: the ``echo_auth_in_errors`` option
    of the fakes, an upstream careless enough to quote the key back, so adapters can prove they scrub it."""
    return f" (Authorization: {request.headers.get('authorization', '')})" if enabled else ""


def throttle_headers(seconds: float | None) -> dict[str, str]:
    """A ``Retry-After`` header in whole seconds (rounded up, at least 1); none for no delay."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))} if seconds else {}


def truncated_json(text: str, status_code: int = 200) -> Response:
    """The ``"malformed"`` failure: a body that promises JSON and is not (cut off, or a proxy's page)."""
    return Response(text, status_code=status_code, media_type="application/json")


async def admitted_json(fake: FakeProvider, request: Request, failure: Callable[[Injected, Request], Response],
                        not_json: Callable[[], Response]) -> dict[str, Any] | Response:
    """The Bearer-keyed request's JSON object body, or the response that refuses it: an injected
    failure (``failure``) or a body that is no JSON object (``not_json``)."""
    injected = await fake.admit(request, bearer_key(request))
    if injected is not None:
        return failure(injected, request)
    body = await json_object(request)
    return not_json() if body is None else body


async def json_object(request: Request) -> dict[str, Any] | None:
    """The request body when it is a JSON object, else None."""
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def parse_size(value: Any) -> tuple[int, int] | None:
    """``"WxH"`` as (width, height), None when it is not that."""
    try:
        width, height = (int(part) for part in str(value).lower().split("x"))
    except ValueError:
        return None
    return width, height


_Default = TypeVar("_Default")


def int_or(value: Any, default: _Default) -> int | _Default:
    """``value`` when it is a JSON integer (not a bool), else ``default``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def new_app(fake: FakeProvider, title: str) -> FastAPI:
    app = FastAPI(title=f"Fake {title} (Forgeline test server)", docs_url="/_fake/docs", openapi_url="/_fake/openapi.json")
    app.include_router(fake.routes())
    app.state.fake = fake
    return app


def _dimension(value: int) -> int:
    """Clamp to what ImageSpec accepts: 64–2048, a multiple of 8."""
    return max(64, min(2048, value - value % 8))
