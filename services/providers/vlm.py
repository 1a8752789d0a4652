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

No retries here: the comparer's caller owns the only retry and failover loop.
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
    http_message,
    json_body,
    provider_message,
    retry_after,
    status_error,
)
from services.providers.openai_images import (
    QUOTA_CODES,
    openai_error,
    parse_reset_duration,
    scrub_key_fragments,
)
from services.providers.port import (
    KeyRejectedError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from services.providers.siliconflow import BALANCE_CODES, siliconflow_code
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
        status = response.status_code
        sf_code = siliconflow_code(response)
        if sf_code is not None:  # SiliconFlow's {"code": <int>, "message"} body
            reason, type_, code = provider_message(response, sf_code), None, None
        else:
            reason, type_, code = openai_error(response)
            reason += f" ({code or type_})" if (code or type_) else ""
        message = scrub_key_fragments(http_message(response, reason, (token,)))
        lowered = reason.lower()
        if status == 401:
            return KeyRejectedError(message, provider=self.name, code="unauthorized")
        if status == 403:
            no_balance = (sf_code in BALANCE_CODES or code in QUOTA_CODES or type_ in QUOTA_CODES
                          or "balance" in lowered or "quota" in lowered)
            return KeyRejectedError(message, provider=self.name,
                                    code="insufficient_quota" if no_balance else "forbidden")
        if status in (400, 422):
            policy = code == "content_policy_violation" or "safety system" in lowered or "content policy" in lowered
            return PermanentProviderError(message, provider=self.name,
                                          code="content_policy" if policy else "bad_request")
        if status == 429:
            if code in QUOTA_CODES or type_ in QUOTA_CODES or sf_code in BALANCE_CODES:
                return KeyRejectedError(message, provider=self.name, code="insufficient_quota")
            seconds = retry_after(response)
            for header in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
                if seconds is None:
                    seconds = parse_reset_duration(response.headers.get(header))
            return RateLimitedError(message, provider=self.name, retry_after_s=seconds)
        if status in (500, 502):
            return RetryableProviderError(message, provider=self.name, code="unavailable")
        if status in (503, 504):
            return RetryableProviderError(message, provider=self.name, code="overloaded")
        error = status_error(response, provider=self.name, secrets=(token,))
        error.message = scrub_key_fragments(error.message)
        return error


def _content_text(content: Any) -> str:
    """``message.content``: a string, or a list of parts whose text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content
                       if isinstance(part, dict) and part.get("type") in ("text", "output_text")
                       and isinstance(part.get("text"), str))
    return ""
