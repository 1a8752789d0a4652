"""One mapping from a failed OpenAI-compatible answer to a provider error, with dialects.

OpenAI's image API, SiliconFlow's image API and the chat-completions servers the VLM talks to
share the status codes' meaning but not their details. A :class:`Dialect` names the details;
:func:`openai_compatible_error` is the one mapping:

======================  =========================================================================
401                     ``KeyRejectedError("unauthorized")``
403                     ``KeyRejectedError("insufficient_quota")`` for a balance refusal when the
                        dialect has them (``quota_on_403``), else ``"forbidden"``
``bad_request`` codes   ``PermanentProviderError("content_policy")`` when the body says so
                        (``content_policy_violation``, ``policy_phrases``), else ``"bad_request"``
429                     ``KeyRejectedError("insufficient_quota")`` for a quota code when the
                        dialect has them (``quota_on_429``): same status as a rate limit, opposite
                        meaning; else ``RateLimitedError`` with ``retry_after_s`` from Retry-After,
                        then the dialect's ``x-ratelimit-reset-*`` headers ("20s", "1m3s", "6ms")
``unavailable`` codes   ``RetryableProviderError("unavailable")``
``overloaded`` codes    ``RetryableProviderError("overloaded")``
anything else           as ``http.error_for_status``
======================  =========================================================================

Bodies: OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (its ``code`` or ``type``
follows the message), SiliconFlow's ``{"code": <int>, "message"}`` (its code follows the
message as ``(code N)``), or plain text. With ``scrub_keys`` even a masked key fragment
(OpenAI's 401 quotes ``sk-abc*****wxyz``) is taken out of the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from services.providers.http import http_message, json_or_none, provider_message, retry_after, status_error
from services.providers.port import (
    KeyRejectedError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)

__all__ = [
    "BALANCE_CODES",
    "CHAT_COMPLETIONS",
    "OPENAI_IMAGES",
    "QUOTA_CODES",
    "SILICONFLOW_IMAGES",
    "Dialect",
    "openai_compatible_error",
    "openai_error",
    "parse_reset_duration",
    "scrub_key_fragments",
    "siliconflow_code",
]

#: error.type / error.code values that mean "no money left", not "slow down" (OpenAI also uses
#: more specific codes with type insufficient_quota, e.g. credit_balance_exhausted).
QUOTA_CODES = {"insufficient_quota", "billing_hard_limit_reached", "credit_balance_exhausted"}

#: SiliconFlow's code for "your account balance is insufficient" (a 403, not a 429).
BALANCE_CODES = {30001}


@dataclass(frozen=True)
class Dialect:
    """How one OpenAI-compatible API's errors differ. Statuses a dialect does not name fall
    through to ``http.error_for_status``."""

    siliconflow_bodies: bool = False  # read {"code": <int>, "message"} bodies
    openai_bodies: bool = False  # read {"error": {"message", "type", "code"}} bodies
    bad_request: frozenset[int] = frozenset({400})
    policy_phrases: tuple[str, ...] = ()  # a bad request whose reason says this is a content-policy refusal
    quota_on_403: bool = False  # a 403 may be a balance refusal
    quota_on_429: bool = False  # a 429 may be a quota refusal (QUOTA_CODES, BALANCE_CODES)
    reset_headers: tuple[str, ...] = ()  # read in order when a 429 has no Retry-After
    unavailable: frozenset[int] = frozenset()
    overloaded: frozenset[int] = frozenset()
    scrub_keys: bool = False


#: OpenAI's image API (and servers copying it): ``{"error": {...}}`` bodies, quota on 429.
OPENAI_IMAGES = Dialect(openai_bodies=True, policy_phrases=("safety system",), quota_on_429=True,
                        reset_headers=("x-ratelimit-reset-requests",), unavailable=frozenset({500, 502, 503}),
                        scrub_keys=True)

#: SiliconFlow's image API: ``{"code": <int>, "message"}`` bodies, a balance refusal is a 403.
SILICONFLOW_IMAGES = Dialect(siliconflow_bodies=True, quota_on_403=True, overloaded=frozenset({503, 504}))

#: A chat-completions server that may be SiliconFlow's or OpenAI's: either body, every refusal.
CHAT_COMPLETIONS = Dialect(siliconflow_bodies=True, openai_bodies=True, bad_request=frozenset({400, 422}),
                           policy_phrases=("safety system", "content policy"), quota_on_403=True, quota_on_429=True,
                           reset_headers=("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"),
                           unavailable=frozenset({500, 502}), overloaded=frozenset({503, 504}), scrub_keys=True)


def openai_compatible_error(response: httpx.Response, *, provider: str, token: str | None,
                            dialect: Dialect) -> ProviderError:
    """The error a failed (non-2xx, read) answer of an OpenAI-compatible API stands for."""
    status = response.status_code
    sf_code = siliconflow_code(response) if dialect.siliconflow_bodies else None
    type_ = code = None
    if sf_code is not None or not dialect.openai_bodies:
        reason = provider_message(response, sf_code)
    else:
        reason, type_, code = openai_error(response)
        reason += f" ({code or type_})" if (code or type_) else ""
    message = http_message(response, reason, (token,))
    if dialect.scrub_keys:
        message = scrub_key_fragments(message)
    lowered = reason.lower()
    quota_code = code in QUOTA_CODES or type_ in QUOTA_CODES or sf_code in BALANCE_CODES
    if status == 401:
        return KeyRejectedError(message, provider=provider, code="unauthorized")
    if status == 403:
        no_balance = dialect.quota_on_403 and (quota_code or "balance" in lowered or "quota" in lowered)
        return KeyRejectedError(message, provider=provider, code="insufficient_quota" if no_balance else "forbidden")
    if status in dialect.bad_request:
        policy = code == "content_policy_violation" or any(phrase in lowered for phrase in dialect.policy_phrases)
        return PermanentProviderError(message, provider=provider, code="content_policy" if policy else "bad_request")
    if status == 429:
        if dialect.quota_on_429 and quota_code:
            return KeyRejectedError(message, provider=provider, code="insufficient_quota")
        seconds = retry_after(response)
        for header in dialect.reset_headers:
            if seconds is None:
                seconds = parse_reset_duration(response.headers.get(header))
        return RateLimitedError(message, provider=provider, retry_after_s=seconds)
    if status in dialect.unavailable:
        return RetryableProviderError(message, provider=provider, code="unavailable")
    if status in dialect.overloaded:
        return RetryableProviderError(message, provider=provider, code="overloaded")
    error = status_error(response, provider=provider, secrets=(token,))
    if dialect.scrub_keys:
        error.message = scrub_key_fragments(error.message)
    return error


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


def siliconflow_code(response: httpx.Response) -> int | None:
    """The integer ``code`` of a SiliconFlow error body, or None."""
    body = json_or_none(response)
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) else None


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
