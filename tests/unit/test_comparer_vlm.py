"""The VLM comparer: its answer parser on what models really write, and the adapter against the fake
chat-completions server over real HTTP on loopback."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from services.common.errors import Retryable
from services.comparer.perceptual import compare
from services.fakeproviders.base import FakeProvider, Knobs, fingerprint
from services.fakeproviders.openai_chat import create_app
from services.fakeproviders.server import PROTOCOLS, _app, serve_fake
from services.providers.port import (
    KeyRejectedError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from services.providers.verdict import VerdictError, build_messages, parse_verdict
from services.providers.vlm import VlmComparer, VlmConfig

TOKEN = "sk-test-not-a-real-key-0000"
MODEL = "Qwen/Qwen3-VL-8B-Instruct"
PROMPT = 'a red "ruby" sword on white'


def _png(fill: str, background: str = "white", box: tuple[int, int, int, int] = (16, 16, 48, 48)) -> bytes:
    image = Image.new("RGB", (64, 64), background)
    ImageDraw.Draw(image).rectangle(box, fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


TARGET = _png("red")
GENERATED = _png("navy", background="#202020", box=(4, 30, 60, 60))


@asynccontextmanager
async def comparer(fake: FakeProvider | None = None, *, sent: list[httpx.Request] | None = None,
                   fake_options: dict[str, Any] | None = None, **config: Any) -> AsyncIterator[VlmComparer]:
    """A VlmComparer talking to the fake VLM on loopback; every request it sends lands in ``sent``."""
    async def record(request: httpx.Request) -> None:
        if sent is not None:
            sent.append(request)

    app = create_app(fake or FakeProvider("vlm"), **(fake_options or {}))
    async with serve_fake(app) as url, httpx.AsyncClient(event_hooks={"request": [record]}) as http:
        yield VlmComparer(VlmConfig(base_url=url, **config), http)


async def judge(**options: Any):
    async with comparer(**options) as vlm:
        return await vlm.judge(data_url(TARGET), data_url(GENERATED), PROMPT, TOKEN)


async def judge_error(fake: FakeProvider | None = None, **options: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await judge(fake=fake, **options)
    assert caught.value.provider == "vlm"
    return caught.value


# -- parse_verdict

VERDICT = {"similarity_score": 72.5, "key_differences": ["blade is shorter"], "prompt_improvements": ["add 'long blade'"]}
STRICT = json.dumps(VERDICT)


@pytest.mark.parametrize(("text", "note"), [
    (STRICT, None),
    (f"Sure! Here it is:\n```json\n{json.dumps(VERDICT, indent=2)}\n```\nHope that helps.", "code fence"),
    (f"```\n{STRICT}\n```", "code fence"),
    (f'<think>\nThey want {{"similarity_score": 0}}; the blade differs.\n</think>\n\n{STRICT}', "<think>"),
    (f"The blade differs.\n</think>\n{STRICT}", "</think>"),  # the template opened the block itself
    (f"I compared both images. My verdict:\n{STRICT}\nOverall, close.", "text around"),
])
def test_reads_the_verdict_however_it_is_wrapped(text, note):
    verdict = parse_verdict(text, model=MODEL)
    assert (verdict.score, verdict.differences, verdict.improvements, verdict.model) == (
        72.5, ["blade is shorter"], ["add 'long blade'"], MODEL)
    if note is None:
        assert verdict.notes == []
    else:
        assert any(note in n for n in verdict.notes), verdict.notes


@pytest.mark.parametrize(("score", "expected", "note"), [
    (140, 100.0, "score 140 clamped to 100"),
    (-3, 0.0, "score -3 clamped to 0"),
    ("87/100", 87.0, "read as 87"),
    ("85%", 85.0, "read as 85"),
    ("8/10", 80.0, "read as 80"),
    ("64.5", 64.5, "was a string"),
    (" 91 / 100 ", 91.0, "read as 91"),
    (55, 55.0, None),
])
def test_scores_are_read_and_clamped_with_a_note(score, expected, note):
    verdict = parse_verdict(json.dumps(VERDICT | {"similarity_score": score}), model=MODEL)
    assert verdict.score == expected
    assert (note is None and verdict.notes == []) or any(note in n for n in verdict.notes), verdict.notes


@pytest.mark.parametrize("text", [
    '{"similarity_score": NaN, "key_differences": []}',
    '{"similarity_score": Infinity}',
    '{"similarity_score": "nan"}',
    '{"similarity_score": "-inf"}',
])
def test_a_score_that_is_not_finite_is_an_error(text):
    with pytest.raises(VerdictError, match="finite"):
        parse_verdict(text, model=MODEL)


@pytest.mark.parametrize("text", ['{"similarity_score": true}', '{"similarity_score": "high"}',
                                  '{"similarity_score": [80]}', '{"similarity_score": "80/0"}'])
def test_a_score_that_is_not_a_number_is_an_error(text):
    with pytest.raises(VerdictError, match="not a number"):
        parse_verdict(text, model=MODEL)


@pytest.mark.parametrize(("obj", "expected"), [
    ({"score": 60, "differences": ["a"], "improvements": ["b"]}, (60.0, ["a"], ["b"])),
    ({"similarity": 61, "key_differences": ["a"], "suggestions": ["b"]}, (61.0, ["a"], ["b"])),
    ({"Similarity_Score": 62, "Differences": ["a"], "Prompt_Improvements": ["b"]}, (62.0, ["a"], ["b"])),
])
def test_key_aliases(obj, expected):
    verdict = parse_verdict(json.dumps(obj), model=MODEL)
    assert (verdict.score, verdict.differences, verdict.improvements) == expected
    assert verdict.notes == []


def test_missing_lists_are_empty_with_a_note_and_a_single_string_becomes_a_list():
    verdict = parse_verdict('{"similarity_score": 50, "key_differences": "  the hilt is gold  "}', model=MODEL)
    assert verdict.differences == ["the hilt is gold"] and verdict.improvements == []
    assert "key_differences was a single string" in verdict.notes
    assert "prompt_improvements missing: empty list" in verdict.notes


def test_list_items_are_cleaned_capped_and_cut():
    items = ["  one  ", "", "   ", 3, {"aspect": "x"}, "two", "three", "x" * 400, "five", "six", "seven"]
    verdict = parse_verdict(json.dumps({"score": 10, "differences": items, "improvements": []}), model=MODEL)
    assert verdict.differences == ["one", "two", "three", "x" * 299 + "…", "five"]
    assert all(0 < len(item) <= 300 for item in verdict.differences)
    assert any("int" in n for n in verdict.notes) and any("dict" in n for n in verdict.notes)
    assert any("kept the first 5" in n for n in verdict.notes)
    assert any("cut to 300" in n for n in verdict.notes)


def test_braces_inside_strings_do_not_confuse_the_scanner():
    text = 'Verdict: {"similarity_score": 40, "key_differences": ["the {rune} glyph } is missing"], ' \
           '"prompt_improvements": ["mention \\"{rune}\\""]} done'
    verdict = parse_verdict(text, model=MODEL)
    assert verdict.score == 40
    assert verdict.differences == ["the {rune} glyph } is missing"]
    assert verdict.improvements == ['mention "{rune}"']


def test_of_two_objects_the_first_valid_one_wins():
    text = '{"similarity_score": 30} and then {"similarity_score": 90}'
    assert parse_verdict(text, model=MODEL).score == 30
    text = '{broken json} {"note": "no score here"} then {"similarity_score": 90}'
    assert parse_verdict(text, model=MODEL).score == 90
    text = 'Schema:\n```json\n{"type": "object"}\n```\nAnswer: {"similarity_score": 77}'
    assert parse_verdict(text, model=MODEL).score == 77


@pytest.mark.parametrize(("text", "message"), [
    ('{"key_differences": ["a"], "prompt_improvements": []}', "answer has no similarity_score"),
    ('{"similarity_score": null}', "answer has no similarity_score"),
    ("I cannot help with that.", 'answer has no JSON object: "I cannot help with that."'),
    ('{"similarity_score": 87, "key_differ', "answer has no JSON object"),
    ("", "answer is empty"),
    ("<think>I should look at the", "answer has no JSON object"),  # reasoning never finished
])
def test_answers_that_are_no_verdict(text, message):
    with pytest.raises(VerdictError) as caught:
        parse_verdict(text, model=MODEL)
    error = caught.value
    assert message in error.message
    assert isinstance(error, PermanentProviderError) and error.code == "unparseable_verdict"
    assert not isinstance(error, Retryable)


def test_an_unparseable_answer_is_quoted_short():
    with pytest.raises(VerdictError) as caught:
        parse_verdict("nope " * 200, model=MODEL)
    quoted = caught.value.message.split(": ", 1)[1]
    assert len(json.loads(quoted)) <= 121  # 120 characters and an ellipsis


def test_build_messages_puts_both_images_in_one_user_message():
    system, user = build_messages("data:image/png;base64,AAAA", "data:image/png;base64,BBBB", PROMPT, "low")
    assert system["role"] == "system" and user["role"] == "user"
    kinds = [part["type"] for part in user["content"]]
    assert kinds == ["text", "image_url", "image_url", "text"]
    assert [part["image_url"] for part in user["content"][1:3]] == [
        {"url": "data:image/png;base64,AAAA", "detail": "low"}, {"url": "data:image/png;base64,BBBB", "detail": "low"}]
    assert json.dumps(PROMPT) in user["content"][0]["text"]  # quoted, inner quotes escaped
    assert "similarity_score" in user["content"][3]["text"] and "JSON only" in user["content"][3]["text"]


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


# -- judge() against the fake VLM

async def test_strict_answer_scores_like_the_perceptual_comparer_and_sends_the_real_protocol():
    fake, sent = FakeProvider("vlm"), []
    async with comparer(fake, sent=sent) as vlm:
        verdict = await vlm.judge(data_url(TARGET), data_url(GENERATED), PROMPT, TOKEN)

    expected = compare(TARGET, GENERATED, PROMPT)
    assert verdict.score == pytest.approx(expected.score, abs=0.01)
    assert verdict.differences == expected.differences and verdict.differences  # the pair differs visibly
    assert verdict.improvements == expected.improvements
    assert (verdict.model, verdict.notes) == (MODEL, [])

    (request,) = sent
    assert request.url.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    body = json.loads(request.content)
    assert body["model"] == MODEL and body["stream"] is False
    assert (body["max_tokens"], body["temperature"]) == (800, 0.1)
    assert "response_format" not in body
    users = [m for m in body["messages"] if m["role"] == "user"]
    assert len(users) == 1
    images = [part for part in users[0]["content"] if part["type"] == "image_url"]
    assert [part["image_url"]["url"] for part in images] == [data_url(TARGET), data_url(GENERATED)]
    assert [r.key for r in fake.requests] == [fingerprint(TOKEN)]  # the fake logs a fingerprint, not the key


async def test_json_mode_and_detail_are_sent():
    sent: list[httpx.Request] = []
    await judge(sent=sent, json_mode=True, detail="low", max_tokens=400)
    body = json.loads(sent[0].content)
    assert body["response_format"] == {"type": "json_object"} and body["max_tokens"] == 400
    assert {part["image_url"]["detail"] for part in body["messages"][1]["content"] if part["type"] == "image_url"} \
        == {"low"}


@pytest.mark.parametrize(("style", "note"), [
    ("fenced", "code fence"), ("think", "<think>"), ("prose", "text around"),
    ("out_of_range", "clamped to 100"), ("string_score", "/100' read as"),
])
async def test_wrapped_answers_are_repaired(style, note):
    verdict = await judge(fake_options={"answer": style})
    expected = compare(TARGET, GENERATED, PROMPT).score
    if style == "out_of_range":
        assert verdict.score == 100
    elif style == "string_score":
        assert verdict.score == round(expected)
    else:
        assert verdict.score == pytest.approx(expected, abs=0.01)
    assert any(note in n for n in verdict.notes), verdict.notes


@pytest.mark.parametrize(("style", "message"), [
    ("garbage", 'answer has no JSON object: "I cannot help with that."'),
    ("missing_score", "answer has no similarity_score"),
])
async def test_answers_that_are_no_verdict_are_permanent_errors(style, message):
    error = await judge_error(fake_options={"answer": style})
    assert isinstance(error, VerdictError) and isinstance(error, PermanentProviderError)
    assert error.code == "unparseable_verdict" and message in error.message
    assert "base64" not in error.message


async def test_a_truncated_answer_says_to_raise_max_tokens():
    error = await judge_error(fake_options={"answer": "truncated"})
    assert isinstance(error, VerdictError) and "max_tokens=800" in error.message


async def test_an_answer_cut_by_a_small_max_tokens_says_so():
    error = await judge_error(max_tokens=16)  # the fake cuts at about 4 characters a token
    assert isinstance(error, VerdictError) and "max_tokens=16" in error.message


async def test_a_filtered_answer_is_a_content_policy_error():
    error = await judge_error(fake_options={"answer": "content_filter"})
    assert type(error) is PermanentProviderError and error.code == "content_policy"


async def test_the_answer_style_can_be_changed_at_run_time():
    app = create_app(FakeProvider("vlm"))
    async with serve_fake(app) as url, httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/_fake/vlm/answer")).json() == {"style": "strict"}
        assert (await http.post(f"{url}/_fake/vlm/answer", json={"style": "nonsense"})).status_code == 422
        assert (await http.post(f"{url}/_fake/vlm/answer", json={"style": "garbage"})).json() == {"style": "garbage"}
        vlm = VlmComparer(VlmConfig(base_url=url), http)
        with pytest.raises(VerdictError):
            await vlm.judge(data_url(TARGET), data_url(GENERATED), PROMPT, TOKEN)
        await http.post(f"{url}/_fake/vlm/answer", json={"style": "think"})
        assert (await vlm.judge(data_url(TARGET), data_url(GENERATED), PROMPT, TOKEN)).notes


async def test_the_fake_takes_only_data_urls():
    async with comparer() as vlm:
        with pytest.raises(PermanentProviderError) as caught:
            await vlm.judge("https://example.invalid/target.png", data_url(GENERATED), PROMPT, TOKEN)
    assert caught.value.code == "bad_request" and "only takes data: URLs" in caught.value.message


@pytest.mark.parametrize(("body", "text"), [
    ({"messages": []}, "model parameter"),
    ({"model": MODEL, "messages": []}, "'messages' must be a non-empty array"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
     "exactly two images"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "video"}]}]}, "Invalid content part"),
])
async def test_the_fake_rejects_bad_bodies_like_openai(body, text):
    async with serve_fake(create_app()) as url, httpx.AsyncClient() as http:
        response = await http.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert text in error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("mode", "error_class", "code", "text"), [
    ("401", KeyRejectedError, "unauthorized", "Incorrect API key provided"),
    ("403", KeyRejectedError, "forbidden", "does not have access"),
    ("400", PermanentProviderError, "content_policy", "content policy"),
    ("quota", KeyRejectedError, "insufficient_quota", "exceeded your current quota"),
    ("429", RateLimitedError, "rate_limited", "Rate limit reached"),
    ("500", RetryableProviderError, "unavailable", "HTTP 500"),
    ("503", RetryableProviderError, "overloaded", "overloaded"),
    ("malformed", RetryableProviderError, "malformed_response", "not JSON"),
])
async def test_openai_error_bodies_map_to_the_provider_errors(mode, error_class, code, text):
    error = await judge_error(FakeProvider("vlm", Knobs(fail_next=[mode])))
    assert type(error) is error_class and error.code == code and text in error.message
    if mode == "429":
        assert error.retry_after_s == 30


@pytest.mark.parametrize(("mode", "error_class", "code", "text"), [
    ("401", KeyRejectedError, "unauthorized", "Invalid token"),
    ("403", KeyRejectedError, "forbidden", "code 30003"),
    ("quota", KeyRejectedError, "insufficient_quota", "balance is insufficient"),
    ("400", PermanentProviderError, "bad_request", "code 20012"),
    ("429", RateLimitedError, "rate_limited", "rate limiting"),
    ("503", RetryableProviderError, "overloaded", "too busy"),
    ("error", RetryableProviderError, "overloaded", "HTTP 504"),
])
async def test_siliconflow_error_bodies_map_to_the_provider_errors(mode, error_class, code, text):
    error = await judge_error(FakeProvider("vlm", Knobs(fail_next=[mode])),
                              fake_options={"error_style": "siliconflow"})
    assert type(error) is error_class and error.code == code and text in error.message


@pytest.mark.parametrize("headers", [{"x-ratelimit-reset-requests": "1m3s"}, {"x-ratelimit-reset-tokens": "63s"},
                                     {"retry-after": "63"}])
async def test_429_retry_after_comes_from_any_reset_header(headers):
    response = httpx.Response(429, headers=headers, json={"error": {"message": "slow down", "type": "requests"}})
    async with httpx.AsyncClient() as http:
        error = VlmComparer(VlmConfig(), http).error_for(response, TOKEN)
    assert isinstance(error, RateLimitedError) and error.retry_after_s == 63


@pytest.mark.parametrize("error_style", ["openai", "siliconflow"])
@pytest.mark.parametrize("mode", ["400", "401", "403", "quota", "429", "500", "503"])
async def test_the_key_is_never_in_errors_even_when_the_provider_echoes_it(error_style, mode):
    error = await judge_error(FakeProvider("vlm", Knobs(fail_next=[mode])),
                              fake_options={"error_style": error_style, "echo_auth_in_errors": True})
    for text in (str(error), repr(error), error.message):
        assert TOKEN not in text and "sk-test" not in text


async def test_the_key_is_not_in_the_adapter_or_its_config():
    async with comparer() as vlm:
        await vlm.judge(data_url(TARGET), data_url(GENERATED), PROMPT, TOKEN)
        assert TOKEN not in repr(vlm) and TOKEN not in repr(vlm.config) and TOKEN not in repr(vlm.__dict__)


def test_the_fake_is_served_by_dev_fake_providers_after_the_others():
    assert PROTOCOLS[-1] == "vlm" and PROTOCOLS[:5] == ("gradio", "replicate", "siliconflow", "cloudflare", "openai")
    assert _app("vlm").state.fake.name == "vlm"
