"""The VLM comparer: a vision-language model judges a generated image against its target, over an
OpenAI-compatible chat-completions API (SiliconFlow's ``Qwen/Qwen3-VL-8B-Instruct`` by default).

``POST {base}/v1/chat/completions`` with a Bearer key and one user message holding an instruction, the
target and the generated image (both as ``image_url`` parts, usually ``data:`` URLs) and the demand for
a JSON answer ``{"similarity_score", "key_differences", "prompt_improvements"}``; what is asked and
how the answer is read are in :mod:`services.providers.verdict`.

Errors come in two body shapes, OpenAI's ``{"error": {"message", "type", "code"}}`` and SiliconFlow's
``{"code": <int>, "message"}`` (401 may be plain text); both map the same way:

=======================================  ===========================================================
401                                      ``KeyRejectedError("unauthorized")``
403, balance refusal (SiliconFlow 30001)  ``KeyRejectedError("insufficient_quota")``
403, other                               ``KeyRejectedError("forbidden")``
400, content policy                      ``PermanentProviderError("content_policy")``
400 / 422, other                         ``PermanentProviderError("bad_request")``
429, ``insufficient_quota``              ``KeyRejectedError("insufficient_quota")``
429, other                               ``RateLimitedError``; ``retry_after_s`` from Retry-After, else
                                         ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens``
500 / 502                                ``RetryableProviderError("unavailable")``
503 / 504                                ``RetryableProviderError("overloaded")``
200 without ``choices[0].message``       ``RetryableProviderError("malformed_response")``
``finish_reason: content_filter``        ``PermanentProviderError("content_policy")``
an answer that is no verdict             ``VerdictError("unparseable_verdict")`` (permanent: the same
                                         images and prompt get the same answer)
=======================================  ===========================================================

The status mapping is :data:`~services.providers.openai_errors.CHAT_COMPLETIONS`'s, in
:mod:`services.providers.openai_errors`. No retries here: the comparer's caller owns the only retry
and failover loop.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import Field

from services.providers.http import (
    Deadline,
    HttpProvider,
    HttpProviderConfig,
    first_item,
    json_body,
)
from services.providers.openai_errors import CHAT_COMPLETIONS, openai_compatible_error
from services.providers.port import (
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
)
from services.providers.verdict import PROVIDER, Verdict, VerdictError, build_messages, parse_verdict

__all__ = ["VlmComparer", "VlmConfig"]


class VlmConfig(HttpProviderConfig):
    base_url: str = "https://api.siliconflow.cn"
    model: str = Field("Qwen/Qwen3-VL-8B-Instruct", min_length=1)
    timeout_s: float = Field(60.0, gt=0, le=600)
    max_tokens: int = Field(800, ge=16, le=32_768, description="Cap on the answer; reasoning models need more.")
    temperature: float = Field(0.1, ge=0, le=2)
    detail: Literal["low", "high", "auto"] = Field("auto", description="Image detail asked of the model.")
    json_mode: bool = Field(False, description='Send response_format {"type": "json_object"} (not every server '
                                               "supports it).")


class VlmComparer(HttpProvider[VlmConfig]):
    """Asks a VLM how close a generated image is to its target. One call, no retries."""

    name = PROVIDER

    async def judge(self, target_data_url: str, generated_data_url: str, original_prompt: str,
                    token: str | None) -> Verdict:
        config = self.config
        body: dict[str, Any] = {
            "model": config.model,
            "messages": build_messages(target_data_url, generated_data_url, original_prompt, config.detail),
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
            "stream": False,
        }
        if config.json_mode:
            body["response_format"] = {"type": "json_object"}
        response = await self.request("POST", config.url("/v1/chat/completions"), token,
                                      Deadline(config.timeout_s), json=body)
        payload = json_body(response, provider=self.name)
        choice = first_item(payload, "choices")
        message = choice.get("message") if choice is not None else None
        if not isinstance(message, dict):
            raise RetryableProviderError("answer has no choices[0].message", provider=self.name,
                                         code="malformed_response")
        finish = choice.get("finish_reason")
        if finish == "content_filter":
            raise PermanentProviderError("the provider's content filter withheld the answer", provider=self.name,
                                         code="content_policy")
        model = payload.get("model") if isinstance(payload.get("model"), str) and payload["model"] else config.model
        try:
            return parse_verdict(_content_text(message.get("content")), model=model)
        except VerdictError as exc:
            if finish == "length":
                raise VerdictError(f"answer was cut off at max_tokens={config.max_tokens} before the verdict "
                                   f"was complete; raise max_tokens ({exc.message})", provider=self.name) from None
            exc.provider = self.name
            raise

    def error_for(self, response: httpx.Response, token: str | None) -> ProviderError:
        return openai_compatible_error(response, provider=self.name, token=token, dialect=CHAT_COMPLETIONS)


def _content_text(content: Any) -> str:
    """``message.content``: a string, or a list of parts whose text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content
                       if isinstance(part, dict) and part.get("type") in ("text", "output_text")
                       and isinstance(part.get("text"), str))
    return ""
