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
anything else                           as ``http.error_for_status``
======================================  ==========================================================

The mapping is :data:`~services.providers.openai_errors.OPENAI_IMAGES`'s, in
:mod:`services.providers.openai_errors`.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field

from services.common.contracts import ImageSpec
from services.providers.http import (
    Deadline,
    HttpProvider,
    HttpProviderConfig,
    first_item,
    json_body,
    prompt_with_style,
)
from services.providers.openai_errors import OPENAI_IMAGES, openai_compatible_error
from services.providers.port import (
    GeneratedImage,
    ProviderError,
    RetryableProviderError,
)

__all__ = ["OpenAIImagesConfig", "OpenAIImagesProvider"]


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
        return openai_compatible_error(response, provider=self.name, token=token, dialect=OPENAI_IMAGES)
