"""SiliconFlow's image API (OpenAI-style host, its own body): ``POST {base}/v1/images/generations``.

Request ``{"model", "prompt", "negative_prompt"?, "image_size": "WxH", "seed"?, "num_inference_steps"?,
"guidance_scale"?}`` with a Bearer key; answer ``{"images": [{"url"}], "timings": {"inference"}, "seed"}``.
The output URL lives about an hour, so it is downloaded at once, within the same deadline.

Errors (body ``{"code": <int>, "message": ...}``; 401 may be plain text):

====================  ==========================================================================
400                   ``PermanentProviderError("bad_request")`` with SiliconFlow's message and code
401                   ``KeyRejectedError("unauthorized")``
403                   ``KeyRejectedError("forbidden")``; ``"insufficient_quota"`` for a balance refusal
429                   ``RateLimitedError`` (RPM/RPD/IPM/IPD... limits), ``retry_after_s`` from Retry-After
503 / 504             ``RetryableProviderError("overloaded")``
anything else         as ``_http.error_for_status``
====================  ==========================================================================
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

__all__ = ["BALANCE_CODES", "SiliconFlowConfig", "SiliconFlowImageProvider", "siliconflow_code"]

#: SiliconFlow's code for "your account balance is insufficient" (a 403, not a 429).
BALANCE_CODES = {30001}


class SiliconFlowConfig(HttpProviderConfig):
    base_url: str = "https://api.siliconflow.cn"
    model: str = Field("black-forest-labs/FLUX.1-schnell", min_length=1)
    num_inference_steps: int | None = Field(None, ge=1, le=100, description="None: the model's default.")
    guidance_scale: float | None = Field(None, ge=0, le=20, description="None: the model's default.")


class SiliconFlowImageProvider(HttpProvider[SiliconFlowConfig]):
    """Generates with a SiliconFlow image model. One call, no retries: the caller owns the retry loop."""

    name = "siliconflow"

    async def generate(self, spec: ImageSpec, token: str | None) -> GeneratedImage:
        deadline = Deadline(self.config.timeout_s)  # one budget for the request and the download
        response = await self.request("POST", self.config.url("/v1/images/generations"), token, deadline,
                                      json=self._body(spec))
        url = _first_url(json_body(response, provider=self.name), self.name)
        # No Authorization on the download: the URL is a (pre-signed) object-store link on another host.
        data, content_type = await self.download(url, token, deadline)
        return self.image(data, content_type, model=self.config.model)

    def _body(self, spec: ImageSpec) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "prompt": prompt_with_style(spec),
                                "image_size": f"{spec.width}x{spec.height}"}
        optional = {"negative_prompt": spec.negative_prompt, "seed": spec.seed,
                    "num_inference_steps": self.config.num_inference_steps,
                    "guidance_scale": self.config.guidance_scale}
        body.update({key: value for key, value in optional.items() if value is not None})
        return body

    def error_for(self, response: httpx.Response, token: str | None) -> ProviderError:
        status = response.status_code
        code = siliconflow_code(response)
        reason = provider_message(response, code)
        message = http_message(response, reason, (token,))
        if status == 400:
            return PermanentProviderError(message, provider=self.name, code="bad_request")
        if status == 401:
            return KeyRejectedError(message, provider=self.name, code="unauthorized")
        if status == 403:
            no_balance = code in BALANCE_CODES or "balance" in reason.lower() or "quota" in reason.lower()
            return KeyRejectedError(message, provider=self.name,
                                    code="insufficient_quota" if no_balance else "forbidden")
        if status == 429:
            # SiliconFlow's limits (RPM/RPD/TPM/TPD/IPM/IPD) are per account, not per key: many keys
            # of one account add no capacity, so cooling this key alone may not be enough.
            return RateLimitedError(message, provider=self.name, retry_after_s=retry_after(response))
        if status in (503, 504):
            return RetryableProviderError(message, provider=self.name, code="overloaded")
        return status_error(response, provider=self.name, secrets=(token,))


def siliconflow_code(response: httpx.Response) -> int | None:
    body = json_or_none(response)
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) else None


def _first_url(payload: Any, provider: str) -> str:
    url = (first_item(payload, "images") or {}).get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise RetryableProviderError("answer has no image URL", provider=provider, code="malformed_response")
    return url
