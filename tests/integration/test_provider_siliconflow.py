"""The SiliconFlow image adapter against the fake SiliconFlow server, over real HTTP on loopback."""

from __future__ import annotations

import json

import httpx
import pytest

from services.common.contracts import ImageSpec
from services.fakeproviders.base import FakeProvider
from services.fakeproviders.siliconflow import create_app
from services.providers.port import (
    KeyRejectedError,
    PermanentProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from services.providers.siliconflow import (
    SiliconFlowConfig,
    SiliconFlowImageProvider,
)
from tests.integration.provider_support import (
    ProviderUnderTest,
    assert_retryable,
    check_error_maps,
    check_per_key_rate_limit,
    check_token_never_in_errors,
)

pytestmark = pytest.mark.integration

TOKEN = "sk-sf-secret-0123456789abcdef"
SILICONFLOW = ProviderUnderTest("siliconflow", create_app, SiliconFlowImageProvider, SiliconFlowConfig)


async def test_generates_and_downloads_the_image_at_once():
    fake, sent = FakeProvider("siliconflow"), []
    spec = ImageSpec(prompt="flaming obsidian greatsword", negative_prompt="blurry", width=512, height=384, seed=7)
    async with SILICONFLOW.adapter(fake, sent=sent, model="black-forest-labs/FLUX.1-schnell",
                                   num_inference_steps=4) as provider:
        image = await provider.generate(spec, TOKEN)

    assert image.data == fake.image(spec.prompt, 512, 384, seed=7)
    assert image.content_type == "image/png"
    assert (image.provider, image.model, image.deterministic) == ("siliconflow", "black-forest-labs/FLUX.1-schnell",
                                                                  False)
    create, download = sent
    assert create.method == "POST" and create.url.path == "/v1/images/generations"
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert json.loads(create.content) == {"model": "black-forest-labs/FLUX.1-schnell",
                                          "prompt": "flaming obsidian greatsword", "negative_prompt": "blurry",
                                          "image_size": "512x384", "seed": 7, "num_inference_steps": 4}
    assert download.method == "GET" and download.url.path.startswith("/files/")
    assert "authorization" not in download.headers  # the key never goes to the output's host


async def test_style_rides_in_the_prompt_and_absent_options_are_left_out():
    sent: list[httpx.Request] = []
    async with SILICONFLOW.adapter(sent=sent) as provider:
        await provider.generate(ImageSpec(prompt="a shield", style="pixel-art"), TOKEN)
    assert json.loads(sent[0].content) == {"model": "black-forest-labs/FLUX.1-schnell",
                                           "prompt": "a shield, pixel-art style", "image_size": "512x512"}


@pytest.mark.parametrize(("mode", "error_class", "code", "text"), [
    ("400", PermanentProviderError, "bad_request", "Model does not exist. Please check it carefully. (code 20012)"),
    ("401", KeyRejectedError, "unauthorized", "Invalid token"),
    ("403", KeyRejectedError, "forbidden", "no permission"),
    ("quota", KeyRejectedError, "insufficient_quota", "account balance is insufficient"),
    ("429", RateLimitedError, "rate_limited", "rate limiting"),
    ("503", RetryableProviderError, "overloaded", "too busy"),
    ("error", RetryableProviderError, "overloaded", "HTTP 504"),
    ("500", RetryableProviderError, "unavailable", "HTTP 500"),
])
async def test_errors_map_to_the_provider_error_classes(mode, error_class, code, text):
    await check_error_maps(SILICONFLOW, TOKEN, mode, error_class, code, text)


async def test_malformed_body_is_retryable():
    assert_retryable(await SILICONFLOW.error(SILICONFLOW.fake("malformed"), TOKEN), "malformed_response")


async def test_a_slow_answer_is_a_retryable_timeout():
    assert_retryable(await SILICONFLOW.error(SILICONFLOW.fake(latency_s=1.0), TOKEN, timeout_s=0.2), "timeout")


async def test_per_key_rate_limit_gives_rate_limited_on_the_third_request():
    await check_per_key_rate_limit(SILICONFLOW, TOKEN)


@pytest.mark.parametrize("mode", ["400", "401", "403", "quota", "429", "500", "503", "error"])
async def test_errors_never_carry_the_token_even_when_the_provider_echoes_it(mode):
    await check_token_never_in_errors(SILICONFLOW, TOKEN, mode)
