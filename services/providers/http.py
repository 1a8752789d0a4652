"""What every HTTP image-provider adapter shares: a config base, an overall deadline, one way to
send a request and map its failures onto the provider errors, and a capped image download.

Adapters never retry: the generator owns the only retry loop (a provider SDK retrying on its own
delays failover). So every helper here turns one failed exchange into one ``ProviderError``:

==========================  ==================================================================
HTTP 429                    ``RateLimitedError`` (``retry_after_s`` from Retry-After or the body)
HTTP 401 / 402 / 403        ``KeyRejectedError``
HTTP 400 / 422 / other 4xx  ``PermanentProviderError`` with the provider's own message
HTTP 404                    ``RetryableProviderError("not_found")``: a wrong model/Space/expired
                            file is this provider's problem, not the job's; another may serve it
HTTP 408, timeouts          ``RetryableProviderError("timeout")``
HTTP 5xx, connection errors ``RetryableProviderError``
body that is not JSON       ``RetryableProviderError("malformed_response")``
==========================  ==================================================================

Messages carry the provider's reason, cut short and with every secret the adapter names
(``secrets=``) replaced, so an upstream that echoes the Authorization header leaks nothing.

``HttpProvider`` is the adapters' base class: it keeps the config and the client, sends every
request with the key as a Bearer header, maps a failed answer with ``error_for`` (the table above
unless an adapter knows its provider's error bodies better) and downloads or decodes the output.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Iterable
from typing import Any, Generic, NoReturn, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from services.common.contracts import ImageSpec
from services.common.images import sniff_content_type
from services.common.retry_after import retry_after_seconds
from services.providers.port import (
    ContentType,
    GeneratedImage,
    KeyRejectedError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)

__all__ = [
    "MAX_DOWNLOAD_BYTES",
    "Deadline",
    "HttpProvider",
    "HttpProviderConfig",
    "bearer_headers",
    "decode_image",
    "download_image",
    "error_for_status",
    "first_item",
    "http_message",
    "json_body",
    "json_or_none",
    "prompt_with_style",
    "provider_message",
    "redact",
    "resolve_url",
    "retry_after",
    "retry_after_from_text",
    "same_origin",
    "send",
    "status_error",
    "transport_error",
]

MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
MAX_MESSAGE_CHARS = 300


class HttpProviderConfig(BaseModel):
    """Settings every HTTP adapter has. Subclass it per provider."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = Field(description="Scheme and host (and path prefix, if any) of the provider's API.")
    timeout_s: float = Field(60.0, gt=0, le=600, description="Overall budget for one generate() call.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Cap on connecting, within timeout_s.")
    max_download_bytes: int = Field(MAX_DOWNLOAD_BYTES, gt=0, description="Larger outputs are refused.")

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


class Deadline:
    """One overall time budget spread over several requests (create, poll, download…)."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0

    def timeout(self, *, connect_s: float = 10.0, read_s: float | None = None) -> httpx.Timeout:
        """An explicit httpx timeout that never outlives the deadline (``read_s``: a tighter per-read cap)."""
        left = max(self.remaining(), 0.001)
        read = min(left, read_s) if read_s is not None else left
        return httpx.Timeout(left, connect=min(connect_s, left), read=read)


def bearer_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` made safe for logs and Kafka: secrets replaced, whitespace folded, length capped."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"


def _message_from(value: Any) -> str | None:
    """The human reason inside the error bodies providers use ({detail}, {message}, {error: {...}}...)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, list) and value:
        return _message_from(value[0])
    if isinstance(value, dict):
        for key in ("detail", "message", "error", "errors", "msg", "title"):
            found = _message_from(value.get(key))
            if found:
                return found
    return None


def provider_message(response: httpx.Response, code: int | None = None) -> str:
    """The provider's own reason for a failed response (raw text when the body is not JSON), and
    its own error ``code`` after it when the adapter found one in the body."""
    return _reason(response) + (f" (code {code})" if code is not None else "")


def _reason(response: httpx.Response) -> str:
    try:
        text = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        return response.reason_phrase or f"HTTP {response.status_code}"
    try:
        found = _message_from(json.loads(text))
    except ValueError:
        found = None
    return found or text.strip() or response.reason_phrase or f"HTTP {response.status_code}"


def http_message(response: httpx.Response, reason: str, secrets: Iterable[str | None] = ()) -> str:
    """What a status error says: ``HTTP <status>: <reason>``, redacted."""
    return redact(f"HTTP {response.status_code}: {reason}", secrets)


def retry_after(response: httpx.Response) -> float | None:
    """The response's Retry-After header in seconds (None when absent or unreadable)."""
    return retry_after_seconds(response.headers.get("retry-after"))


_IN_SECONDS = re.compile(
    r"(?:\bin|\bafter)\s*~?\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)\b",
    re.IGNORECASE,
)
_UNIT_S = {"ms": 0.001, "m": 60.0, "h": 3600.0}


def retry_after_from_text(text: str) -> float | None:
    """Seconds from prose like Replicate's "Your rate limit resets in ~30s." (None if absent)."""
    match = _IN_SECONDS.search(text)
    if match is None:
        return None
    unit = match.group(2).lower()
    scale = _UNIT_S["ms"] if unit.startswith(("ms", "milli")) else _UNIT_S.get(unit[0], 1.0)
    return float(match.group(1)) * scale


def error_for_status(response: httpx.Response, *, provider: str,
                     secrets: Iterable[str | None] = ()) -> ProviderError | None:
    """The error a non-2xx response stands for (None for 2xx). The body must have been read."""
    status = response.status_code
    if status < 300:
        return None
    reason = provider_message(response)
    message = http_message(response, reason, secrets)
    if status == 429:
        seconds = retry_after(response)
        if seconds is None:
            seconds = retry_after_from_text(reason)
        return RateLimitedError(message, provider=provider, retry_after_s=seconds)
    if status == 402:  # Replicate's "insufficient credit": the account behind the key has no money left
        return KeyRejectedError(message, provider=provider, code="insufficient_quota")
    if status in (401, 403):
        return KeyRejectedError(message, provider=provider, code="unauthorized" if status == 401 else "forbidden")
    if status == 404:
        return RetryableProviderError(message, provider=provider, code="not_found")
    if status == 408:
        return RetryableProviderError(message, provider=provider, code="timeout")
    if status in (400, 422):
        return PermanentProviderError(message, provider=provider, code="bad_request")
    if 400 <= status < 500:
        return PermanentProviderError(message, provider=provider, code=f"http_{status}")
    return RetryableProviderError(message, provider=provider, code="unavailable")


def status_error(response: httpx.Response, *, provider: str,
                 secrets: Iterable[str | None] = ()) -> ProviderError:
    """``error_for_status`` of a response already known to have failed (non-2xx)."""
    error = error_for_status(response, provider=provider, secrets=secrets)
    if error is None:
        raise ValueError(f"HTTP {response.status_code} is not a failure")
    return error


def transport_error(exc: httpx.HTTPError, *, provider: str,
                    secrets: Iterable[str | None] = ()) -> RetryableProviderError:
    """A request that got no usable answer: timed out, refused, reset…"""
    detail = redact(f"{type(exc).__name__}: {exc}".rstrip(": "), secrets)
    if isinstance(exc, httpx.TimeoutException):
        return RetryableProviderError(f"no answer in time ({detail})", provider=provider, code="timeout")
    return RetryableProviderError(f"request failed ({detail})", provider=provider, code="connection")


def json_body(response: httpx.Response, *, provider: str) -> Any:
    try:
        return response.json()
    except ValueError:
        # A proxy's HTML error page or a truncated body: the provider is having trouble, try later
        _malformed(provider, f"HTTP {response.status_code} body is not JSON")


def json_or_none(response: httpx.Response) -> Any:
    """The body as JSON, or None when it is not JSON (error bodies may be plain text or HTML)."""
    try:
        return response.json()
    except ValueError:
        return None


def first_item(payload: Any, key: str) -> dict[str, Any] | None:
    """``payload[key][0]`` when the answer has that shape and it is an object, else None."""
    items = payload.get(key) if isinstance(payload, dict) else None
    first = items[0] if isinstance(items, list) and items else None
    return first if isinstance(first, dict) else None


def prompt_with_style(spec: ImageSpec) -> str:
    """Hosted models have no style parameter: the style rides along in the prompt."""
    return f"{spec.prompt}, {spec.style} style" if spec.style else spec.prompt


def _malformed(provider: str, message: str) -> NoReturn:
    raise RetryableProviderError(message, provider=provider, code="malformed_response")


async def send(http: httpx.AsyncClient, method: str, url: str, *, provider: str, timeout: httpx.Timeout,
               secrets: Iterable[str | None] = (), check: bool = True, **kwargs: Any) -> httpx.Response:
    """One request; transport failures become errors, and with ``check`` so do non-2xx answers."""
    secrets = tuple(secrets)
    try:
        response = await http.request(method, url, timeout=timeout, **kwargs)
    except httpx.HTTPError as exc:
        raise transport_error(exc, provider=provider, secrets=secrets) from None
    if check and (error := error_for_status(response, provider=provider, secrets=secrets)) is not None:
        raise error
    return response


def resolve_url(base_url: str, url: str) -> str:
    """``url`` as an absolute URL; relative ones resolve against the provider's base."""
    return urljoin(base_url.rstrip("/") + "/", url)


def same_origin(a: str, b: str) -> bool:
    """Whether credentials meant for ``a`` may be sent to ``b`` (same scheme, host and port)."""
    x, y = urlsplit(a), urlsplit(b)
    return (x.scheme, x.hostname, x.port) == (y.scheme, y.hostname, y.port)


async def download_image(http: httpx.AsyncClient, url: str, *, provider: str, timeout: httpx.Timeout,
                         max_bytes: int = MAX_DOWNLOAD_BYTES, headers: dict[str, str] | None = None,
                         secrets: Iterable[str | None] = ()) -> tuple[bytes, ContentType]:
    """Fetch an output image, refusing more than ``max_bytes`` and anything that is not PNG/JPEG/WebP.

    The content type comes from the bytes, never from the server's header. The URL stays out of
    messages: output URLs are often signed.
    """
    secrets = tuple(secrets)
    try:
        async with http.stream("GET", url, headers=headers or {}, timeout=timeout,
                               follow_redirects=True) as response:
            if response.status_code >= 300:
                await response.aread()
                error = status_error(response, provider=provider, secrets=secrets)
                error.message = f"output download failed: {error.message}"
                raise error
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _too_large(provider, max_bytes)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(provider, max_bytes)
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise transport_error(exc, provider=provider, secrets=secrets) from None
    return _image_bytes(b"".join(chunks), provider=provider, what="output")


def decode_image(text: str, *, what: str, provider: str,
                 max_bytes: int = MAX_DOWNLOAD_BYTES) -> tuple[bytes, ContentType]:
    """An output image that came inline as base64 (``what`` names the field in messages), with the
    same size cap and content-type sniffing as ``download_image``."""
    # base64 is 4/3 of the bytes: refuse before decoding what would be too large anyway.
    if len(text) * 3 // 4 > max_bytes:
        raise _too_large(provider, max_bytes)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RetryableProviderError(f"{what} is not base64", provider=provider, code="malformed_response") from None
    return _image_bytes(data, provider=provider, what=what)


def _image_bytes(data: bytes, *, provider: str, what: str) -> tuple[bytes, ContentType]:
    content_type = sniff_content_type(data)
    if content_type is None:
        _malformed(provider, f"{what} is not a PNG, JPEG or WebP image ({len(data)} bytes)")
    return data, content_type  # type: ignore[return-value]  # sniff_content_type only names ContentType values


def _too_large(provider: str, max_bytes: int) -> RetryableProviderError:
    return RetryableProviderError(f"output is larger than {max_bytes} bytes", provider=provider, code="too_large")


ConfigT = TypeVar("ConfigT", bound=HttpProviderConfig)


class HttpProvider(Generic[ConfigT]):
    """Base of the adapters: the config and client they keep and the one way they talk to a provider.

    A subclass names itself (``name``), writes ``generate`` and, when its provider's error bodies
    say more than the status does, overrides ``error_for``. ``token`` is the key's secret (None: no
    auth); it goes out as a Bearer header and is redacted from every message.
    """

    name: str

    def __init__(self, config: ConfigT, http: httpx.AsyncClient) -> None:
        self.config = config
        self.http = http

    def timeout(self, deadline: Deadline, *, read_s: float | None = None) -> httpx.Timeout:
        return deadline.timeout(connect_s=self.config.connect_timeout_s, read_s=read_s)

    def error_for(self, response: httpx.Response, token: str | None) -> ProviderError:
        """The error a failed (non-2xx, read) response stands for: the table in this module's doc."""
        return status_error(response, provider=self.name, secrets=(token,))

    async def request(self, method: str, url: str, token: str | None, deadline: Deadline, *,
                      headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        """One request with the token, within ``deadline``; a non-2xx answer raises ``error_for`` it."""
        response = await send(self.http, method, url, provider=self.name, secrets=(token,), check=False,
                              headers=bearer_headers(token) | (headers or {}), timeout=self.timeout(deadline),
                              **kwargs)
        if response.status_code >= 300:
            raise self.error_for(response, token)
        return response

    async def download(self, url: str, token: str | None, deadline: Deadline, *,
                       send_token: bool = False) -> tuple[bytes, ContentType]:
        """The output image at ``url``. With ``send_token`` the token goes along, and only to the
        provider's own origin; pre-signed links on other hosts never see it."""
        headers = bearer_headers(token) if send_token and same_origin(self.config.base_url, url) else {}
        return await download_image(self.http, url, provider=self.name, headers=headers, secrets=(token,),
                                    timeout=self.timeout(deadline), max_bytes=self.config.max_download_bytes)

    def decode(self, text: str, *, what: str) -> tuple[bytes, ContentType]:
        """An output image sent inline as base64, within ``max_download_bytes``."""
        return decode_image(text, what=what, provider=self.name, max_bytes=self.config.max_download_bytes)

    def image(self, data: bytes, content_type: ContentType, *, model: str) -> GeneratedImage:
        return GeneratedImage(data=data, content_type=content_type, provider=self.name, model=model,
                              deterministic=False)
