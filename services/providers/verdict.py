"""What the VLM is asked, and how its answer is read: the prompt and the verdict parser.

Models do not always obey the answer format, so :func:`parse_verdict` reads the answer
leniently: reasoning in ``<think>`` blocks, code fences, prose around the object, aliased keys
and scores like ``"85/100"`` are repaired, and each repair is recorded in :attr:`Verdict.notes`.
An answer with no JSON object or no score is a :class:`VerdictError` (permanent: the same images
and prompt get the same kind of answer).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from services.providers.port import PermanentProviderError

__all__ = [
    "MAX_ITEMS",
    "PROVIDER",
    "Verdict",
    "VerdictError",
    "build_messages",
    "parse_verdict",
]

PROVIDER = "vlm"
MAX_ITEMS = 5  # per list in a verdict
MAX_ITEM_CHARS = 300
QUOTE_CHARS = 120  # of an unparseable answer, in the error message

SYSTEM_PROMPT = (
    "You are a meticulous art director comparing a generated game asset with the target image it should "
    "reproduce. You judge only what you see, and you answer with a single JSON object and nothing else."
)
ANSWER_FORMAT = (
    'Answer with JSON only, exactly this shape: {"similarity_score": <number from 0 to 100>, '
    '"key_differences": ["<difference>", ...], "prompt_improvements": ["<change to the prompt>", ...]}. '
    "similarity_score: 100 means the images are identical in subject, composition, colours and style; "
    "0 means unrelated. At most 5 key_differences and 5 prompt_improvements, each one short sentence. "
    "No markdown, no code fences, no text before or after the JSON object."
)


@dataclass(frozen=True)
class Verdict:
    """What the model said: a 0–100 score, what differs, how to change the prompt, and what was repaired."""

    score: float
    differences: list[str]
    improvements: list[str]
    model: str
    notes: list[str] = field(default_factory=list)


class VerdictError(PermanentProviderError):
    """The model answered, but not with a verdict. Permanent: asking again gets the same kind of answer."""

    def __init__(self, message: str, *, provider: str = PROVIDER, code: str = "unparseable_verdict") -> None:
        super().__init__(message, provider=provider, code=code)


def build_messages(target_data_url: str, generated_data_url: str, original_prompt: str,
                   detail: str = "auto") -> list[dict[str, Any]]:
    """The chat: a system message and one user message with both images between the instructions."""
    intro = (
        "Image 1 is the TARGET: the image we want. Image 2 is the GENERATED image, made by a text-to-image "
        f"model from this prompt. Original prompt: {json.dumps(original_prompt, ensure_ascii=False)}. "
        "Compare image 2 with image 1: subject, shapes and composition, colours, lighting, level of detail "
        "and style. Then suggest changes to the prompt that would bring the next generation closer to the target."
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [
            {"type": "text", "text": intro},
            {"type": "image_url", "image_url": {"url": target_data_url, "detail": detail}},
            {"type": "image_url", "image_url": {"url": generated_data_url, "detail": detail}},
            {"type": "text", "text": ANSWER_FORMAT},
        ]},
    ]


# -- reading the answer

_SCORE_KEYS = ("similarity_score", "score", "similarity")
_DIFFERENCE_KEYS = ("key_differences", "differences")
_IMPROVEMENT_KEYS = ("prompt_improvements", "improvements", "suggestions")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_SCORE_TEXT = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:(%)|/\s*(\d+(?:\.\d+)?))?\s*$")


def parse_verdict(text: str, *, model: str) -> Verdict:
    """The verdict in a model's answer, repaired where it can be (see :attr:`Verdict.notes`).

    Raises :class:`VerdictError` when the answer holds no JSON object, or one without a usable score.
    """
    if not isinstance(text, str) or not text.strip():
        raise VerdictError("answer is empty")
    notes: list[str] = []
    body = _without_reasoning(text, notes)
    found = _find_object(body, notes)
    if found is None:
        raise VerdictError(f"answer has no JSON object: {_quote(body.strip() or text)}")
    obj, whole = found
    if not whole:
        notes.append("text around the JSON object was ignored")
    score = _score(obj, notes)
    differences = _items(obj, _DIFFERENCE_KEYS, notes)
    improvements = _items(obj, _IMPROVEMENT_KEYS, notes)
    return Verdict(score=score, differences=differences, improvements=improvements, model=model, notes=notes)


def _without_reasoning(text: str, notes: list[str]) -> str:
    stripped = _THINK.sub("", text)
    if stripped != text:
        notes.append("a <think> block was removed")
    lowered = stripped.lower()
    if "</think>" in lowered:  # the opening tag came from the chat template: the reasoning runs up to here
        stripped = stripped[lowered.rindex("</think>") + len("</think>"):]
        notes.append("reasoning before </think> was removed")
    elif "<think>" in lowered:  # never closed: everything after it is unfinished reasoning
        stripped = stripped[:lowered.index("<think>")]
        notes.append("an unclosed <think> block was removed")
    return stripped


def _find_object(text: str, notes: list[str]) -> tuple[dict[str, Any], bool] | None:
    """The first JSON object with a score (else the first object at all), fenced answers first, and
    whether it was the whole answer."""
    for match in _FENCE.finditer(text):
        found = _scan(match.group(1))
        if found is not None and _lookup(found[0], _SCORE_KEYS)[0] is not None:
            notes.append("answer was inside a code fence")
            rest = (text[:match.start()] + text[match.end():]).strip()
            return found[0], found[1] and not rest
    return _scan(text)


def _scan(text: str) -> tuple[dict[str, Any], bool] | None:
    decoder = json.JSONDecoder()
    first: tuple[dict[str, Any], bool] | None = None
    start = text.find("{")
    while start != -1:
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict):
            found = (obj, not text[:start].strip() and not text[end:].strip())
            if _lookup(obj, _SCORE_KEYS)[0] is not None:
                return found
            first = first or found
        start = text.find("{", end)  # objects inside this one belong to it
    return first


def _lookup(obj: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    lowered = {str(key).strip().lower(): key for key in obj}
    for key in keys:
        if key in lowered:
            return key, obj[lowered[key]]
    return None, None


def _score(obj: dict[str, Any], notes: list[str]) -> float:
    key, value = _lookup(obj, _SCORE_KEYS)
    if key is None or value is None:
        raise VerdictError("answer has no similarity_score")
    if isinstance(value, bool):
        raise VerdictError(f"similarity_score is not a number: {value!r}")
    if isinstance(value, int | float):
        score = float(value)
    elif isinstance(value, str):
        score = _score_from_text(value, notes)
    else:
        raise VerdictError(f"similarity_score is not a number: {_quote(json.dumps(value))}")
    if not math.isfinite(score):
        raise VerdictError(f"similarity_score is not a finite number: {value!r}")
    clamped = min(100.0, max(0.0, score))
    if clamped != score:
        notes.append(f"score {score:g} clamped to {clamped:g}")
    return clamped


def _score_from_text(value: str, notes: list[str]) -> float:
    match = _SCORE_TEXT.match(value)
    if match is None:
        try:
            score = float(value)  # "nan", "inf", "1e2"
        except ValueError:
            raise VerdictError(f"similarity_score is not a number: {_quote(value)}") from None
        if math.isfinite(score):
            notes.append(f"score {value!r} was a string")
        return score
    number, percent, scale = match.groups()
    score = float(number)
    if scale is not None:
        if float(scale) <= 0:
            raise VerdictError(f"similarity_score is not a number: {_quote(value)}")
        score = score * 100 / float(scale)
    notes.append(f"score {value!r} read as {score:g}" if (percent or scale) else f"score {value!r} was a string")
    return score


def _items(obj: dict[str, Any], keys: tuple[str, ...], notes: list[str]) -> list[str]:
    key, value = _lookup(obj, keys)
    if key is None or value is None:
        notes.append(f"{keys[0]} missing: empty list")
        return []
    if isinstance(value, str):
        notes.append(f"{key} was a single string")
        value = [value]
    if not isinstance(value, list):
        notes.append(f"{key} was not a list: ignored")
        return []
    items: list[str] = []
    for item in value:
        if not isinstance(item, str):
            notes.append(f"a {type(item).__name__} in {key} was dropped")
            continue
        item = " ".join(item.split())
        if not item:
            continue
        if len(item) > MAX_ITEM_CHARS:
            notes.append(f"an item of {key} was cut to {MAX_ITEM_CHARS} characters")
            item = item[:MAX_ITEM_CHARS - 1] + "…"
        items.append(item)
    if len(items) > MAX_ITEMS:
        notes.append(f"{key} had {len(items)} items: kept the first {MAX_ITEMS}")
    return items[:MAX_ITEMS]


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return json.dumps(text[:QUOTE_CHARS] + ("…" if len(text) > QUOTE_CHARS else ""), ensure_ascii=False)
