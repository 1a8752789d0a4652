"""How ingest tells a client what is wrong with a request: short, encodable, never an echo.

FastAPI's own 422 puts the whole input in the body: a 14 MB data URL comes back as a 14 MB
error, and an input JSON cannot carry (NaN, a lone surrogate) turns the error into a 500.
Here every problem names its field (``loc``), a ``type`` and a ``msg``, and at most
``EXCERPT_CHARS`` characters of the input, escaped so the body always encodes. An image field
over its length limit is a 413, as the README promises, not a 422.

JSON bodies must be UTF-8 (RFC 8259): :class:`Utf8JsonRoute` answers 400 before FastAPI parses
a body that is not, or that nests too deeply to parse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from services.common.contracts import printable

EXCERPT_CHARS = 40
_LOC_PART_CHARS = 64
_TEXT_CHARS = 300
_MAX_ERRORS = 20

#: Request fields that carry an image: too long is "too large" (413), not "invalid" (422).
IMAGE_FIELDS = frozenset({"reference_image", "target_image", "generated_image"})


def excerpt(value: Any) -> str | None:
    """A short, printable excerpt of a rejected input (None for containers: their fields say more)."""
    if isinstance(value, str):
        return printable(value, EXCERPT_CHARS)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int | float):
        return printable(repr(value), EXCERPT_CHARS)
    if isinstance(value, bytes):
        return printable(value[:EXCERPT_CHARS].decode("utf-8", "backslashreplace"), EXCERPT_CHARS)
    return None


def _loc_part(part: Any) -> str | int:
    return part if isinstance(part, int) and not isinstance(part, bool) else printable(str(part), _LOC_PART_CHARS)


def problems(errors: Iterable[dict[str, Any]], *, prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    """Pydantic or FastAPI errors as the API reports them: type, loc, msg, short ctx and input excerpt.

    ``prefix`` is put before each ``loc`` (``("body",)`` for a model validated outside FastAPI).
    """
    items: list[dict[str, Any]] = []
    for error in errors:
        if len(items) == _MAX_ERRORS:
            items.append({"type": "too_many_errors", "loc": [], "msg": f"only the first {_MAX_ERRORS} are listed"})
            break
        item: dict[str, Any] = {
            "type": printable(str(error.get("type", "invalid")), _LOC_PART_CHARS),
            "loc": [_loc_part(part) for part in (*prefix, *error.get("loc", ()))],
            "msg": printable(str(error.get("msg", "")), _TEXT_CHARS),
        }
        if error.get("ctx"):
            item["ctx"] = {printable(str(name), _LOC_PART_CHARS): printable(str(value), _TEXT_CHARS)
                           for name, value in error["ctx"].items()}
        if "input" in error and (shown := excerpt(error["input"])) is not None:
            item["input"] = shown
        items.append(item)
    return items


def oversized_image(errors: Iterable[dict[str, Any]]) -> str | None:
    """The image field that is over its length limit, if any."""
    for error in errors:
        loc = tuple(error.get("loc", ()))
        if error.get("type") == "string_too_long" and len(loc) == 2 and loc[0] == "body" and loc[1] in IMAGE_FIELDS:
            return str(loc[1])
    return None


async def request_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's ``RequestValidationError`` as a short 422, or a 413 for an image over its limit."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if (field := oversized_image(errors)) is not None:
        return JSONResponse({"detail": f"{field}: the image is larger than 10 MB; send a smaller one"},
                            status_code=413)
    return JSONResponse({"detail": problems(errors)}, status_code=422)


class BodyNotParsed(Exception):
    """A JSON body that is not UTF-8, or nests too deeply to parse (400)."""


async def body_not_parsed(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


class Utf8JsonRoute(APIRoute):
    """A route whose JSON body must be UTF-8: anything else is a 400 naming the first bad byte.

    Python's ``json.loads`` would guess UTF-16/32 and let UTF-8-encoded surrogates through.
    The body is parsed here once; FastAPI reuses the parsed value (``Request.json`` caches it).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            if self.body_field is not None and "json" in request.headers.get("content-type", "json"):
                await _parse_utf8_json(request)
            return await handler(request)

        return checked


async def _parse_utf8_json(request: Request) -> None:
    body = await request.body()
    if not body:
        return
    try:
        body.decode("utf-8", "strict")
    except UnicodeDecodeError as exc:
        raise BodyNotParsed(f"the body is not UTF-8 (invalid byte at position {exc.start}); "
                            "send JSON encoded as UTF-8") from None
    try:
        await request.json()
    except json.JSONDecodeError:
        return  # FastAPI answers it with a 422 json_invalid at the position
    except RecursionError:
        raise BodyNotParsed("the body nests too deeply to parse; flatten it") from None


def decimal_at_most(limit: int) -> str:
    """A regex (no anchors) for the decimals 0..``limit`` without leading zeros: a range a schema can state."""
    digits = str(limit)
    width = len(digits)
    options = ["0"] + ([rf"[1-9]\d{{0,{width - 2}}}"] if width > 1 else [])
    for i, digit in enumerate(map(int, digits)):
        low = 1 if i == 0 else 0
        if digit > low:
            rest = rf"\d{{{width - i - 1}}}" if i < width - 1 else ""
            span = str(low) if digit - 1 == low else f"[{low}-{digit - 1}]"
            options.append(f"{digits[:i]}{span}{rest}")
    options.append(digits)
    return "(?:" + "|".join(options) + ")"


_U64 = decimal_at_most(2**64 - 1)
#: A Redis stream id as XREAD takes it: ``ms`` or ``ms-seq``, each part at most 2^64 − 1.
STREAM_ID_PATTERN = f"^{_U64}(?:-{_U64})?$"
