"""The OpenAI-compatible images adapter against the fake OpenAI images server, over real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

from services.common.contracts import ImageSpec
from services.fakeproviders.base import FakeProvider
from services.fakeproviders.openai_images import create_app
from services.providers.openai_errors import parse_reset_duration
from services.providers.openai_images import (
    OpenAIImagesConfig,
    OpenAIImagesProvider,
)
from services.providers.port import (
    KeyRejectedError,
    PermanentProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from tests.integration.provider_support import (
    ProviderUnderTest,
    assert_retryable,
    check_error_maps,
    check_per_key_rate_limit,
    check_token_never_in_errors,
)

pytestmark = pytest.mark.integration

TOKEN = "sk-proj-secret0123456789abcdef"
OPENAI = ProviderUnderTest("openai", create_app, OpenAIImagesProvider, OpenAIImagesConfig)


@pytest.mark.parametrize("response_format", ["b64_json", "url"])
async def test_generates_in_either_response_format(response_format):
    fake, sent = FakeProvider("openai"), []
    spec = ImageSpec(prompt="cursed bone amulet", width=512, height=768)
    async with OPENAI.adapter(fake, sent=sent, model="dall-e-2", response_format=response_format) as provider:
        image = await provider.generate(spec, TOKEN)

    assert image.data == fake.image("cursed bone amulet", 512, 768)
    assert image.content_type == "image/png"
    assert (image.provider, image.model, image.deterministic) == ("openai", "dall-e-2", False)
    assert sent[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(sent[0].content) == {"model": "dall-e-2", "prompt": "cursed bone amulet", "n": 1,
                                           "size": "512x768", "response_format": response_format}
    if response_format == "url":
        (_, download) = sent
        assert download.url.path.startswith("/files/")
        assert "authorization" not in download.headers  # the key never goes to the output's host
    else:
        assert len(sent) == 1


async def test_response_format_can_be_left_out():
    fake, sent = FakeProvider("openai"), []
    async with OPENAI.adapter(fake, sent=sent, model="gpt-image-1", response_format=None) as provider:
        image = await provider.generate(ImageSpec(prompt="a shield", style="painterly"), TOKEN)
    body = json.loads(sent[0].content)
    assert "response_format" not in body and body["prompt"] == "a shield, painterly style"
    assert image.data == fake.image("a shield, painterly style")  # the fake's default is url: downloaded


@pytest.mark.parametrize(("mode", "error_class", "code", "text"), [
    ("401", KeyRejectedError, "unauthorized", "Incorrect API key provided"),
    ("403", KeyRejectedError, "forbidden", "does not have access"),
    ("400", PermanentProviderError, "content_policy", "rejected as a result of our safety system"),
    ("quota", KeyRejectedError, "insufficient_quota", "exceeded your current quota"),
    ("429", RateLimitedError, "rate_limited", "Rate limit reached"),
    ("500", RetryableProviderError, "unavailable", "HTTP 500"),
    ("502", RetryableProviderError, "unavailable", "HTTP 502"),
    ("503", RetryableProviderError, "unavailable", "overloaded"),
])
async def test_errors_map_to_the_provider_error_classes(mode, error_class, code, text):
    await check_error_maps(OPENAI, TOKEN, mode, error_class, code, text)


async def test_rate_limit_without_retry_after_uses_x_ratelimit_reset_requests():
    error = await OPENAI.error(OPENAI.fake("429", retry_after_s=63), TOKEN, fake_options={"retry_after_header": False})
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s == 63.0  # from "1m3s"


@pytest.mark.parametrize(("header", "seconds"), [
    ("20s", 20.0), ("1m3s", 63.0), ("6m0s", 360.0), ("120ms", 0.12), ("1h2m", 3720.0), ("1.5s", 1.5),
    ("", None), (None, None), ("soon", None), ("20", None), ("1m3sx", None),
])
def test_parse_reset_duration(header, seconds):
    parsed = parse_reset_duration(header)
    assert parsed is None if seconds is None else parsed == pytest.approx(seconds)


async def test_malformed_body_is_retryable():
    assert_retryable(await OPENAI.error(OPENAI.fake("malformed"), TOKEN), "malformed_response")


async def test_a_slow_answer_is_a_retryable_timeout():
    assert_retryable(await OPENAI.error(OPENAI.fake(latency_s=1.0), TOKEN, timeout_s=0.2), "timeout")


async def test_per_key_rate_limit_gives_rate_limited_on_the_third_request():
    await check_per_key_rate_limit(OPENAI, TOKEN)


@pytest.mark.parametrize("mode", ["400", "401", "403", "quota", "429", "500", "503"])
async def test_errors_never_carry_the_token_even_when_the_provider_echoes_it(mode):
    await check_token_never_in_errors(OPENAI, TOKEN, mode, fragment=True)


async def test_a_masked_key_quoted_by_a_401_is_scrubbed_too():
    # Real OpenAI 401s quote the key masked: "Incorrect API key provided: sk-proj-****cdef."
    async def masked(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": "Incorrect API key provided: sk-proj-****cdef. You can find your API key "
                                     "at https://platform.openai.com/account/api-keys.",
                          "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
        return httpx.Response(401, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(masked)) as http:
        provider = OpenAIImagesProvider(OpenAIImagesConfig(base_url="http://openai.invalid"), http)
        with pytest.raises(KeyRejectedError) as caught:
            await provider.generate(ImageSpec(prompt="a shield"), TOKEN)
    assert "cdef" not in caught.value.message
    assert "Incorrect API key provided: [redacted]" in caught.value.message
