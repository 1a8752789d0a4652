"""Cloudflare Workers AI, flux-1-schnell: ``POST {base}/client/v4/accounts/{account_id}/ai/run/{model}``.

Request ``{"prompt" (≤ 2048 chars), "steps" (≤ 8), "seed"?}`` with a Bearer API token; answer
``{"result": {"image": "<base64 JPEG>"}, "success": true, "errors": []}``. The model has no size
input (it draws 1024x1024), so the spec's width and height are not sent. The content type comes
from the decoded bytes (JPEG today), never from what the answer claims.

Errors come as ``{"success": false, "errors": [{"code", "message"}]}``; the code decides:

================  =====  ======================================================================
3036              429    daily free allocation used up → ``KeyRejectedError("daily_quota")``: a
                         daily quota, not a short cooldown, so the key pool disables the key
3040              429    out of capacity → ``RateLimitedError("out_of_capacity")``
other             429    ``RateLimitedError`` (Retry-After when sent)
3007              408    timeout → ``RetryableProviderError("timeout")``
5007              400    no such model → ``PermanentProviderError("no_such_model")``
other             401/3  ``KeyRejectedError``
other             4xx    ``PermanentProviderError``
other             5xx    ``RetryableProviderError``
================  =====  ======================================================================
"""

from __future__ import annotations

from typing import Any

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
    provider_message,
    retry_after,
)
from services.providers.port import (
    GeneratedImage,
    KeyRejectedError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)

__all__ = ["MAX_PROMPT_CHARS", "CloudflareConfig", "CloudflareImageProvider"]

MAX_PROMPT_CHARS = 2048  # flux-1-schnell's input schema

DAILY_QUOTA, OUT_OF_CAPACITY, TIMEOUT, NO_SUCH_MODEL = 3036, 3040, 3007, 5007


class CloudflareConfig(HttpProviderConfig):
    base_url: str = "https://api.cloudflare.com"
    account_id: str = Field(min_length=1, description="Not a secret: it is part of every API URL.")
    model: str = Field("@cf/black-forest-labs/flux-1-schnell", min_length=1)
    steps: int = Field(4, ge=1, le=8, description="Diffusion steps; flux-1-schnell allows at most 8.")


class CloudflareImageProvider(HttpProvider[CloudflareConfig]):
    """Generates with flux-1-schnell on Workers AI. One call, no retries: the caller owns the retry loop."""

    name = "cloudflare"

    async def generate(self, spec: ImageSpec, token: str | None) -> GeneratedImage:
        config = self.config
        prompt = prompt_with_style(spec)
        if len(prompt) > MAX_PROMPT_CHARS:
            # Refused here rather than cut: a truncated prompt draws something the caller did not ask for.
            raise PermanentProviderError(f"prompt is {len(prompt)} characters; flux-1-schnell takes at most "
                                         f"{MAX_PROMPT_CHARS}", provider=self.name, code="prompt_too_long")
        body: dict[str, Any] = {"prompt": prompt, "steps": config.steps}
        if spec.seed is not None:
            body["seed"] = spec.seed
        url = config.url(f"/client/v4/accounts/{config.account_id}/ai/run/{config.model}")
        response = await self.request("POST", url, token, Deadline(config.timeout_s), json=body)
        payload = json_body(response, provider=self.name)
        if not isinstance(payload, dict):
            raise RetryableProviderError("answer is not a Cloudflare envelope", provider=self.name,
                                         code="malformed_response")
        if payload.get("success") is False:  # a 200 can still carry errors[]
            raise self.error_for(response, token)
        result = payload.get("result")
        image = result.get("image") if isinstance(result, dict) else None
        if not isinstance(image, str) or not image:
            raise RetryableProviderError("answer has no result.image", provider=self.name, code="malformed_response")
        data, content_type = self.decode(image, what="result.image")
        return self.image(data, content_type, model=config.model)

    def error_for(self, response: httpx.Response, token: str | None) -> ProviderError:
        status = response.status_code
        code = _cloudflare_code(response)
        message = http_message(response, provider_message(response, code), (token,))
        if code == DAILY_QUOTA:
            return KeyRejectedError(message, provider=self.name, code="daily_quota")
        if code == OUT_OF_CAPACITY:
            return RateLimitedError(message, provider=self.name, code="out_of_capacity",
                                    retry_after_s=retry_after(response))
        if code == TIMEOUT or status == 408:
            return RetryableProviderError(message, provider=self.name, code="timeout")
        if code == NO_SUCH_MODEL:
            return PermanentProviderError(message, provider=self.name, code="no_such_model")
        if status == 429:
            return RateLimitedError(message, provider=self.name, retry_after_s=retry_after(response))
        if status in (401, 403):
            return KeyRejectedError(message, provider=self.name, code="unauthorized" if status == 401 else "forbidden")
        if 400 <= status < 500:
            return PermanentProviderError(message, provider=self.name, code="bad_request" if status == 400
                                          else f"http_{status}")
        # 5xx, or a 200 that says success: false without a code we know: the provider's trouble.
        return RetryableProviderError(message, provider=self.name, code="unavailable")


def _cloudflare_code(response: httpx.Response) -> int | None:
    """The first ``errors[].code`` of a Cloudflare envelope (None when absent or not JSON)."""
    code = (first_item(json_or_none(response), "errors") or {}).get("code")
    return code if isinstance(code, int) else None
