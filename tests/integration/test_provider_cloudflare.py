"""The Cloudflare Workers AI (flux-1-schnell) adapter against the fake Workers AI, over real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

from services.common.contracts import ImageSpec
from services.common.errors import Retryable
from services.fakeproviders.base import FakeProvider
from services.fakeproviders.cloudflare import create_app
from services.providers.cloudflare import (
    CloudflareConfig,
    CloudflareImageProvider,
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

TOKEN = "cf-secret-token-0123456789abcdef"
ACCOUNT = "0123456789abcdef0123456789abcdef"
CLOUDFLARE = ProviderUnderTest("cloudflare", create_app, CloudflareImageProvider, CloudflareConfig,
                               defaults={"account_id": ACCOUNT})


async def test_generates_a_jpeg_from_the_base64_result():
    fake, sent = FakeProvider("cloudflare"), []
    async with CLOUDFLARE.adapter(fake, sent=sent) as provider:
        image = await provider.generate(ImageSpec(prompt="frost rune dagger", seed=3), TOKEN)

    assert image.data == fake.image("frost rune dagger", seed=3, content_type="image/jpeg")
    assert image.data.startswith(b"\xff\xd8\xff")
    assert image.content_type == "image/jpeg"
    assert (image.provider, image.model, image.deterministic) == ("cloudflare", "@cf/black-forest-labs/flux-1-schnell",
                                                                  False)
    (request,) = sent  # the image is in the answer: no second request
    assert request.url.path == f"/client/v4/accounts/{ACCOUNT}/ai/run/@cf/black-forest-labs/flux-1-schnell"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(request.content) == {"prompt": "frost rune dagger", "steps": 4, "seed": 3}


async def test_steps_are_configurable_up_to_eight():
    sent: list[httpx.Request] = []
    async with CLOUDFLARE.adapter(sent=sent, steps=8) as provider:
        await provider.generate(ImageSpec(prompt="a shield"), TOKEN)
    assert json.loads(sent[0].content) == {"prompt": "a shield", "steps": 8}
    with pytest.raises(ValueError):
        CloudflareConfig(base_url="http://x", account_id=ACCOUNT, steps=9)


async def test_a_prompt_over_2048_characters_is_refused_before_any_request():
    fake = FakeProvider("cloudflare")
    spec = ImageSpec(prompt="x" * 2000, style="y" * 64)  # the style suffix pushes it past 2048
    async with CLOUDFLARE.adapter(fake) as provider:
        with pytest.raises(PermanentProviderError) as caught:
            await provider.generate(spec, TOKEN)
    assert caught.value.code == "prompt_too_long"
    assert fake.requests == []


@pytest.mark.parametrize(("mode", "error_class", "code", "text"), [
    ("quota", KeyRejectedError, "daily_quota", "continue usage. (code 3036)"),
    ("error", RateLimitedError, "out_of_capacity", "No more data centers to forward the request to (code 3040)"),
    ("429", RateLimitedError, "rate_limited", "throttling"),
    ("401", KeyRejectedError, "unauthorized", "Authentication error"),
    ("403", KeyRejectedError, "forbidden", "Service unavailable for account"),
    ("400", PermanentProviderError, "bad_request", "missing headers or body (code 3003)"),
    ("500", RetryableProviderError, "unavailable", "HTTP 500"),
    ("502", RetryableProviderError, "unavailable", "HTTP 502"),
    ("503", RetryableProviderError, "unavailable", "HTTP 503"),
])
async def test_errors_map_by_cloudflare_code(mode, error_class, code, text):
    error = await check_error_maps(CLOUDFLARE, TOKEN, mode, error_class, code, text)
    if mode == "quota":
        # the job may still succeed with another key; this key is done for the day
        assert isinstance(error, Retryable)


async def test_code_3007_is_a_retryable_timeout():
    error = await CLOUDFLARE.error(CLOUDFLARE.fake("error"), TOKEN,
                                   fake_options={"failures": {"error": (408, 3007, "Request timeout")}})
    assert_retryable(error, "timeout")
    assert "Request timeout (code 3007)" in error.message


async def test_an_unknown_model_is_permanent_5007():
    error = await CLOUDFLARE.error(None, TOKEN, model="@cf/nobody/no-such-model")
    assert isinstance(error, PermanentProviderError)
    assert error.code == "no_such_model"
    assert "No such model @cf/nobody/no-such-model" in error.message


async def test_malformed_body_is_retryable():
    assert_retryable(await CLOUDFLARE.error(CLOUDFLARE.fake("malformed"), TOKEN), "malformed_response")


async def test_a_slow_answer_is_a_retryable_timeout():
    assert_retryable(await CLOUDFLARE.error(CLOUDFLARE.fake(latency_s=1.0), TOKEN, timeout_s=0.2), "timeout")


async def test_per_key_rate_limit_gives_rate_limited_on_the_third_request():
    await check_per_key_rate_limit(CLOUDFLARE, TOKEN)


@pytest.mark.parametrize("mode", ["400", "401", "403", "quota", "429", "500", "error"])
async def test_errors_never_carry_the_token_even_when_the_provider_echoes_it(mode):
    await check_token_never_in_errors(CLOUDFLARE, TOKEN, mode)
