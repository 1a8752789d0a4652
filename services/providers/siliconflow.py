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
anything else         as ``http.error_for_status``
====================  ==========================================================================

The mapping is :data:`~services.providers.openai_errors.SILICONFLOW_IMAGES`'s, in
:mod:`services.providers.openai_errors`.
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
    json_body,
    prompt_with_style,
)
from services.providers.openai_errors import SILICONFLOW_IMAGES, openai_compatible_error
from services.providers.port import (
    GeneratedImage,
    ProviderError,
    RetryableProviderError,
)

__all__ = ["SiliconFlowConfig", "SiliconFlowImageProvider"]


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
        # SiliconFlow's limits (RPM/RPD/TPM/TPD/IPM/IPD) are per account, not per key: many keys
        # of one account add no capacity, so cooling a rate-limited key alone may not be enough.
        return openai_compatible_error(response, provider=self.name, token=token, dialect=SILICONFLOW_IMAGES)


def _first_url(payload: Any, provider: str) -> str:
    url = (first_item(payload, "images") or {}).get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise RetryableProviderError("answer has no image URL", provider=provider, code="malformed_response")
    return url
