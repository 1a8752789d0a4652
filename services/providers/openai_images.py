"""OpenAI-compatible image APIs: ``POST {base}/v1/images/generations``.

Request ``{"model", "prompt", "n": 1, "size": "WxH", "response_format": "b64_json" | "url"}`` with a
Bearer key; answer ``{"created", "data": [{"b64_json" | "url", "revised_prompt"?}]}``. URLs expire
after about an hour and are downloaded at once; ``b64_json`` (the default here) needs no second
request. Models that always answer base64 and refuse the field (gpt-image-1) take
``response_format=None``.

Errors (body ``{"error": {"message", "type", "param", "code"}}``):

======================================  ==========================================================
401                                     ``KeyRejectedError("unauthorized")``
403                                     ``KeyRejectedError("forbidden")``
400, ``code: content_policy_violation``  ``PermanentProviderError("content_policy")`` — never retry
400, other                              ``PermanentProviderError("bad_request")``
429, ``insufficient_quota``             ``KeyRejectedError("insufficient_quota")``: same status as a
                                        rate limit, opposite meaning — waiting brings no credit back
429, other                              ``RateLimitedError``; ``retry_after_s`` from Retry-After, else
                                        ``x-ratelimit-reset-requests`` ("20s", "1m3s", "120ms")
500 / 502 / 503                         ``RetryableProviderError("unavailable")``
anything else                           as ``_http.error_for_status``
======================================  ==========================================================
"""

from __future__ import annotations

import re
from typing import Any, Literal

import httpx
from pydantic import Field

from services.common.contracts import ImageSpec
from services.providers.http import (
    Deadline,
    HttpProvider,
    HttpProviderConfig,
    first_item,
    http_message,
    json_body,
    json_or_none,
    prompt_with_style,
    retry_after,
    status_error,
)
from services.providers.port import (
    GeneratedImage,
    KeyRejectedError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)

__all__ = ["QUOTA_CODES", "OpenAIImagesConfig", "OpenAIImagesProvider", "openai_error", "parse_reset_duration",
           "scrub_key_fragments"]

#: error.type / error.code values that mean "no money left", not "slow down" (OpenAI also uses
#: more specific codes with type insufficient_quota, e.g. credit_balance_exhausted).
QUOTA_CODES = {"insufficient_quota", "billing_hard_limit_reached", "credit_balance_exhausted"}


class OpenAIImagesConfig(HttpProviderConfig):
    base_url: str = "https://api.openai.com"
    model: str = Field("dall-e-3", min_length=1)
    response_format: Literal["b64_json", "url"] | None = Field(
        "b64_json", description="None: leave the field out (for models that always answer base64).")


class OpenAIImagesProvider(HttpProvider[OpenAIImagesConfig]):
    """Generates with an OpenAI-compatible image endpoint. One call, no retries: the caller owns the loop."""

    name = "openai"

    async def generate(self, spec: ImageSpec, token: str | None) -> GeneratedImage:
        config = self.config
        deadline = Deadline(config.timeout_s)  # one budget for the request and any download
        body: dict[str, Any] = {"model": config.model, "prompt": prompt_with_style(spec), "n": 1,
                                "size": f"{spec.width}x{spec.height}"}
        if config.response_format is not None:
            body["response_format"] = config.response_format
        response = await self.request("POST", config.url("/v1/images/generations"), token, deadline, json=body)
        item = first_item(json_body(response, provider=self.name), "data")
        if item is None:
            raise RetryableProviderError("answer has no data[0]", provider=self.name, code="malformed_response")
        if isinstance(item.get("b64_json"), str) and item["b64_json"]:
            data, content_type = self.decode(item["b64_json"], what="b64_json")
        elif isinstance(item.get("url"), str) and item["url"].startswith(("http://", "https://")):
            # No Authorization on the download: the URL is a pre-signed blob link, often on another host.
            data, content_type = await self.download(item["url"], token, deadline)
        else:
            raise RetryableProviderError("answer has neither data[0].b64_json nor data[0].url",
                                         provider=self.name, code="malformed_response")
        return self.image(data, content_type, model=config.model)

    def error_for(self, response: httpx.Response, token: str | None) -> ProviderError:
        status = response.status_code
        reason, type_, code = openai_error(response)
        detail = f" ({code or type_})" if (code or type_) else ""
        message = scrub_key_fragments(http_message(response, reason + detail, (token,)))
        if status == 401:
            return KeyRejectedError(message, provider=self.name, code="unauthorized")
        if status == 403:
            return KeyRejectedError(message, provider=self.name, code="forbidden")
        if status == 400:
            policy = code == "content_policy_violation" or "safety system" in reason.lower()
            return PermanentProviderError(message, provider=self.name,
                                          code="content_policy" if policy else "bad_request")
        if status == 429:
            if code in QUOTA_CODES or type_ in QUOTA_CODES:
                return KeyRejectedError(message, provider=self.name, code="insufficient_quota")
            seconds = retry_after(response)
            if seconds is None:
                seconds = parse_reset_duration(response.headers.get("x-ratelimit-reset-requests"))
            return RateLimitedError(message, provider=self.name, retry_after_s=seconds)
        if status in (500, 502, 503):
            return RetryableProviderError(message, provider=self.name, code="unavailable")
        error = status_error(response, provider=self.name, secrets=(token,))
        error.message = scrub_key_fragments(error.message)
        return error


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset_duration(value: str | None) -> float | None:
    """Seconds from an ``x-ratelimit-reset-*`` header: Go-style durations like ``"20s"``, ``"1m3s"``, ``"6ms"``."""
    text = (value or "").strip().lower()
    if not text or _DURATION_PART.sub("", text):  # empty, or something besides number+unit pairs
        return None
    return sum(float(number) * _UNIT_S[unit] for number, unit in _DURATION_PART.findall(text))


# OpenAI's 401 quotes a masked key ("Incorrect API key provided: sk-abc*****wxyz"): even a fragment
# stays out of messages that reach logs and Kafka.
_KEY_FRAGMENT = re.compile(r"(provided:\s*)\S+|\bsk-[A-Za-z0-9_*\-]{4,}")


def scrub_key_fragments(text: str) -> str:
    return _KEY_FRAGMENT.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


def openai_error(response: httpx.Response) -> tuple[str, str | None, str | None]:
    """(message, type, code) of an OpenAI error body; the raw text (or reason phrase) when it is not one."""
    body = json_or_none(response)
    if body is None:  # not JSON
        return response.text.strip() or response.reason_phrase or f"HTTP {response.status_code}", None, None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return (str(error) if error else response.text.strip()) or f"HTTP {response.status_code}", None, None
    message, type_, code = error.get("message"), error.get("type"), error.get("code")
    return (message if isinstance(message, str) and message else f"HTTP {response.status_code}",
            type_ if isinstance(type_, str) else None, code if isinstance(code, str) else None)

