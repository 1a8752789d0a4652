"""A fake OpenAI-compatible chat-completions API with eyes: ``POST /v1/chat/completions``, a stand-in
for the VLM comparer's model (SiliconFlow's Qwen3-VL and the like).

The body is checked the way OpenAI checks it (``model``, a ``messages`` list, well-formed content parts).
The request must carry exactly two ``image_url`` parts with ``data:image/...;base64,`` URLs (the first
the target, the second the generated image); the fake decodes them and scores the pair with the
perceptual comparer, so its answers mean something: the same pair always gets the same score, and
:func:`services.comparer.perceptual.compare` says which. ``https`` image URLs are refused with a 400:
the fake fetches nothing.

The answer is a ``chat.completion`` whose content is written in one of the :data:`ANSWER_STYLES`, to
exercise a client's parser with what real models do: ``strict`` JSON, JSON in a code ``fenced`` block,
a ``think`` block (with a decoy object inside) before it, ``prose`` around it, a score ``out_of_range``
(140) or as a ``string_score`` ("87/100"), a ``missing_score``, ``garbage``, a ``truncated`` answer
(``finish_reason: "length"``), or nothing at all under ``content_filter``. An answer longer than the
request's ``max_tokens`` (about 4 characters a token) is cut there, with ``finish_reason: "length"``.

The style is ``create_app(answer=...)``, and at run time ``POST /_fake/vlm/answer {"style": "fenced"}``
(``GET`` reads it; ``/_fake/reset`` leaves it alone). Failures come from the usual knobs
(``/_fake/knobs``); errors are OpenAI's ``{"error": {...}}`` bodies, or with
``error_style="siliconflow"`` SiliconFlow's ``{"code", "message"}`` bodies and plain-text 401s.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from services.comparer.perceptual import compare
from services.fakeproviders import openai_images, siliconflow
from services.fakeproviders.base import (
    FakeProvider,
    Injected,
    admitted_json,
    echo_auth,
    int_or,
    new_app,
    throttle_headers,
    truncated_json,
)

AnswerStyle = Literal["strict", "fenced", "think", "prose", "out_of_range", "string_score", "missing_score",
                      "garbage", "truncated", "content_filter"]
ANSWER_STYLES: tuple[str, ...] = AnswerStyle.__args__  # type: ignore[attr-defined]

#: (HTTP status, message, type, code) per injected failure: the images fake's, in chat words.
FAILURES: dict[str, tuple[int, str, str, str | None]] = openai_images.FAILURES | {
    "400": (400, "Invalid content: this request was rejected by our content policy.", "invalid_request_error",
            "content_policy_violation"),
    "403": (403, "Project does not have access to this vision model.", "invalid_request_error", "model_not_found"),
    "429": (429, "Rate limit reached for requests per min (RPM). Please try again later.", "requests",
            "rate_limit_exceeded"),
}

_DATA_URL = re.compile(r"^data:(image/[a-z0-9.+-]+);base64,(.*)$", re.IGNORECASE | re.DOTALL)
_ORIGINAL_PROMPT = re.compile(r'original prompt:\s*("(?:[^"\\]|\\.)*")', re.IGNORECASE)
_ROLES = {"system", "developer", "user", "assistant", "tool"}
CHARS_PER_TOKEN = 4
IMAGE_TOKENS = {"low": 85, "high": 765, "auto": 765}


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


class AnswerUpdate(BaseModel):
    style: AnswerStyle


def create_app(fake: FakeProvider | None = None, *, answer: AnswerStyle = "strict",
               error_style: Literal["openai", "siliconflow"] = "openai",
               echo_auth_in_errors: bool = False) -> FastAPI:
    """The fake chat-completions server around ``fake`` (a fresh ``FakeProvider("vlm")`` by default)."""
    if answer not in ANSWER_STYLES:
        raise ValueError(f"answer style {answer!r} is not one of {', '.join(ANSWER_STYLES)}")
    fake = fake or FakeProvider("vlm")
    app = new_app(fake, "OpenAI-compatible chat completions (VLM)")
    app.state.answer = answer

    def error(status: int, message: str, request: Request, *, type_: str = "invalid_request_error",
              code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None) -> Response:
        message += echo_auth(request, echo_auth_in_errors)
        if error_style == "siliconflow":
            if status == 401:
                return PlainTextResponse("Invalid token" + echo_auth(request, echo_auth_in_errors), status_code=401)
            sf_code = 20015 if status == 400 else next(
                (c for s, c, _ in siliconflow.FAILURES.values() if s == status), 50500)
            return JSONResponse({"code": sf_code, "message": message, "data": None}, status_code=status,
                                headers=headers)
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        return JSONResponse(body, status_code=status, headers=headers)

    def failure(injected: Injected, request: Request) -> Response:
        if injected.mode == "malformed":
            return truncated_json('{"id": "chatcmpl-1", "choices": [{"message": {"content": "{\\"simil')
        headers: dict[str, str] = {}
        if injected.mode == "429" and injected.retry_after_s:
            headers = {"x-ratelimit-reset-requests": openai_images._duration(injected.retry_after_s)}
            headers |= throttle_headers(injected.retry_after_s)
        if error_style == "siliconflow" and injected.mode in siliconflow.FAILURES:
            status, sf_code, message = siliconflow.FAILURES[injected.mode]
            body = {"code": sf_code, "message": message + echo_auth(request, echo_auth_in_errors), "data": None}
            return JSONResponse(body, status_code=status, headers=headers)
        status, message, type_, code = FAILURES.get(injected.mode, FAILURES["500"])
        return error(status, message, request, type_=type_, code=code, headers=headers)

    @app.get("/_fake/vlm/answer")
    async def get_answer() -> dict[str, str]:
        return {"style": app.state.answer}

    @app.post("/_fake/vlm/answer")
    async def set_answer(update: AnswerUpdate) -> dict[str, str]:
        app.state.answer = update.style
        return {"style": app.state.answer}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Response:
        body = await admitted_json(fake, request, failure, lambda: error(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                                  "aren't using your HTTP library correctly.)", request))
        if isinstance(body, Response):
            return body
        try:
            model, max_tokens, images, detail, text = _read(body)
            target, generated = (_decode(url, index) for index, url in enumerate(images))
            # The comparison is CPU work; off the loop it cannot stall the server (or a test sharing the loop).
            result = await asyncio.to_thread(compare, target, generated, _original_prompt(text))
        except _BadRequest as exc:
            return error(400, exc.message, request, param=exc.param, code=exc.code)
        except ValueError:
            return error(400, "You uploaded an unsupported image. Please make sure your image is valid.", request,
                         code="invalid_image_format")
        content, finish = _answer(app.state.answer, result.score, result.differences, result.improvements)
        if max_tokens is not None and len(content) > max_tokens * CHARS_PER_TOKEN:
            content, finish = content[:max_tokens * CHARS_PER_TOKEN], "length"
        prompt_tokens = len(text) // CHARS_PER_TOKEN + 2 * IMAGE_TOKENS[detail] + 8
        completion_tokens = max(1, -(-len(content) // CHARS_PER_TOKEN))
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    return app


def _read(body: dict[str, Any]) -> tuple[str, int | None, list[str], str, str]:
    """(model, max_tokens, the image URLs, their detail, the text of the messages) of a valid body."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    if body.get("stream") not in (None, False):
        raise _BadRequest("stream: the fake answers whole completions only", "stream")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (int_or(max_tokens, 0) < 1):
        raise _BadRequest(f"Invalid 'max_tokens': {max_tokens!r}; expected an integer of at least 1.", "max_tokens")
    temperature = body.get("temperature", 1)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise _BadRequest(f"Invalid 'temperature': {temperature!r}; expected a number from 0 to 2.", "temperature")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") not in
                                        ("text", "json_object", "json_schema")):
        raise _BadRequest("Invalid 'response_format': type must be 'text', 'json_object' or 'json_schema'.",
                          "response_format")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array", "messages")
    images: list[str] = []
    details: set[str] = set()
    texts: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _BadRequest(f"Invalid 'messages[{i}]': each message needs a role among {sorted(_ROLES)}.",
                              f"messages.[{i}].role")
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        if not isinstance(content, list) or not content:
            raise _BadRequest(f"Invalid 'messages[{i}].content': expected a string or a non-empty array of parts.",
                              f"messages.[{i}].content")
        for j, part in enumerate(content):
            param = f"messages.[{i}].content.[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict) \
                    and isinstance(part["image_url"].get("url"), str):
                if message["role"] != "user":
                    raise _BadRequest(f"Image parts are only allowed in user messages, not {message['role']}.", param)
                detail = part["image_url"].get("detail", "auto")
                if detail not in IMAGE_TOKENS:
                    raise _BadRequest(f"Invalid 'detail': {detail!r}; expected 'low', 'high' or 'auto'.", param)
                images.append(part["image_url"]["url"])
                details.add(detail)
            else:
                raise _BadRequest(f"Invalid content part {param}: expected {{'type': 'text', 'text'}} or "
                                  "{'type': 'image_url', 'image_url': {'url'}}.", param)
    if len(images) != 2:
        raise _BadRequest(f"the fake VLM compares exactly two images (target, then generated); got {len(images)}",
                          "messages")
    detail = "high" if "high" in details else "auto" if "auto" in details else "low"
    return model, max_tokens, images, detail, "\n".join(texts)


def _decode(url: str, index: int) -> bytes:
    role = ("target", "generated")[index]
    if url.startswith(("http://", "https://")):
        raise _BadRequest(f"the fake only takes data: URLs (base64 images); the {role} image is a web URL",
                          code="invalid_image_url")
    match = _DATA_URL.match(url)
    if match is None:
        raise _BadRequest(f"the {role} image URL is not a data:image/...;base64, URL", code="invalid_image_url")
    try:
        return base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise _BadRequest(f"the {role} image's base64 data is invalid", code="invalid_image_format") from None


def _original_prompt(text: str) -> str:
    match = _ORIGINAL_PROMPT.search(text)
    if match is None:
        return ""
    try:
        return json.loads(match.group(1))
    except ValueError:
        return ""


def _answer(style: str, score: float, differences: list[str], improvements: list[str]) -> tuple[str, str]:
    """(content, finish_reason) of an answer with this verdict, written in ``style``."""
    verdict: dict[str, Any] = {"similarity_score": score, "key_differences": differences,
                               "prompt_improvements": improvements}
    strict = json.dumps(verdict)
    if style == "fenced":
        return (f"Here is my assessment of the two images:\n```json\n{json.dumps(verdict, indent=2)}\n```\n"
                "Let me know if you need more detail."), "stop"
    if style == "think":
        decoy = '{"similarity_score": 0}'
        return (f"<think>\nThe user wants JSON like {decoy}. Image 1 is the target, image 2 the generated "
                f"one; I compare shapes, colours and detail.\n</think>\n\n{strict}"), "stop"
    if style == "prose":
        return (f"I compared the generated image with the target. My verdict:\n{strict}\n"
                "Overall the generated image is a reasonable attempt."), "stop"
    if style == "out_of_range":
        return json.dumps(verdict | {"similarity_score": 140}), "stop"
    if style == "string_score":
        return json.dumps(verdict | {"similarity_score": f"{round(score)}/100"}), "stop"
    if style == "missing_score":
        return json.dumps({"key_differences": differences, "prompt_improvements": improvements}), "stop"
    if style == "garbage":
        return "I cannot help with that.", "stop"
    if style == "truncated":
        return strict[:max(10, len(strict) // 2)], "length"
    if style == "content_filter":
        return "", "content_filter"
    return strict, "stop"
