"""The Replicate adapter against the fake Replicate, over real HTTP on loopback."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from services.common.contracts import ImageSpec
from services.fakeproviders.base import FakeProvider, Knobs
from services.fakeproviders.replicate import PREDICTION_ERROR, create_app
from services.providers.port import (
    KeyRejectedError,
    PermanentProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from services.providers.replicate import ReplicateConfig, ReplicateProvider
from tests.integration.provider_support import (
    ProviderUnderTest,
    assert_retryable,
    check_token_never_in_errors,
)

pytestmark = pytest.mark.integration

MODEL = "black-forest-labs/flux-schnell"
TOKEN = "r8_fake-test-token-not-real-1234"
SPEC = ImageSpec(prompt="flaming obsidian greatsword", negative_prompt="blurry", width=256, height=192, seed=7)
REPLICATE = ProviderUnderTest("replicate", create_app, ReplicateProvider, ReplicateConfig,
                              defaults={"model": MODEL, "poll_interval_s": 0.05}, spec=SPEC)


def polls(fake: FakeProvider) -> int:
    return sum(1 for r in fake.requests if r.method == "GET" and r.path.startswith("/v1/predictions/"))


async def test_prefer_wait_answers_in_the_create_request() -> None:
    fake, sent = FakeProvider("replicate"), []
    async with REPLICATE.adapter(fake, sent=sent) as provider:
        image = await provider.generate(SPEC, TOKEN)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    assert (image.provider, image.model, image.content_type, image.deterministic) == (
        "replicate", MODEL, "image/png", False)
    method, path, prefer = sent[0].method, sent[0].url.path, sent[0].headers.get("prefer")
    assert (method, path) == ("POST", f"/v1/models/{MODEL}/predictions")
    assert prefer is not None and prefer.startswith("wait=") and 1 <= int(prefer[5:]) <= 60
    assert polls(fake) == 0


@pytest.mark.parametrize("target,path", [
    ({"version": "5599ed30703defd1d160a25a63321b4dec97101d98b4674bcc56e41f62f35637"}, "/v1/predictions"),
    ({"deployment": "forgeline/sdxl"}, "/v1/deployments/forgeline/sdxl/predictions"),
])
async def test_version_and_deployment_endpoints(target: dict[str, str], path: str) -> None:
    fake, sent = FakeProvider("replicate"), []
    async with REPLICATE.adapter(fake, sent=sent, model=None, **target) as provider:
        image = await provider.generate(SPEC, TOKEN)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    assert (sent[0].method, sent[0].url.path) == ("POST", path)


async def test_output_as_a_bare_url() -> None:
    fake = FakeProvider("replicate")
    async with REPLICATE.adapter(fake, fake_options={"output_as_list": False}) as provider:
        image = await provider.generate(SPEC, TOKEN)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)


async def test_slow_start_is_polled_until_it_succeeds() -> None:
    fake = FakeProvider("replicate", Knobs(slow_start_polls=3))
    async with REPLICATE.adapter(fake) as provider:
        image = await provider.generate(SPEC, TOKEN)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    assert polls(fake) >= 3


async def test_failed_prediction_is_permanent_with_its_error_text() -> None:
    error = await REPLICATE.error(REPLICATE.fake("error"), TOKEN)
    assert isinstance(error, PermanentProviderError) and error.code == "prediction_failed"
    assert PREDICTION_ERROR in str(error)


async def test_failure_after_a_slow_start_is_permanent_too() -> None:
    error = await REPLICATE.error(REPLICATE.fake("error", slow_start_polls=2), TOKEN)
    assert isinstance(error, PermanentProviderError) and PREDICTION_ERROR in str(error)


async def test_deadline_cancels_the_prediction() -> None:
    fake, sent = FakeProvider("replicate", Knobs(slow_start_polls=10_000)), []
    async with REPLICATE.adapter(fake, sent=sent, timeout_s=0.5) as provider:
        with pytest.raises(RetryableProviderError) as caught:
            await provider.generate(SPEC, TOKEN)
    assert caught.value.code == "timeout"
    cancels = [r.url.path for r in sent if r.method == "POST" and r.url.path.endswith("/cancel")]
    assert len(cancels) == 1 and any(r.path == cancels[0] for r in fake.requests)
    assert polls(fake) >= 1


async def test_429_retry_after_from_the_header() -> None:
    error = await REPLICATE.error(REPLICATE.fake("429", retry_after_s=17), TOKEN)
    assert isinstance(error, RateLimitedError) and error.retry_after_s == 17


async def test_429_retry_after_from_replicates_body() -> None:
    error = await REPLICATE.error(REPLICATE.fake("429", retry_after_s=30), TOKEN,
                                  fake_options={"retry_after_header": False})
    assert isinstance(error, RateLimitedError) and error.retry_after_s == 30
    assert "Request was throttled" in str(error)


@pytest.mark.parametrize("mode,code", [("401", "unauthorized"), ("403", "forbidden"), ("quota", "insufficient_quota")])
async def test_rejected_keys(mode: str, code: str) -> None:
    error = await REPLICATE.error(REPLICATE.fake(mode), TOKEN)
    assert isinstance(error, KeyRejectedError) and error.code == code


async def test_missing_token_is_rejected() -> None:
    error = await REPLICATE.error(None, None)
    assert isinstance(error, KeyRejectedError) and "authentication token" in str(error)


async def test_invalid_input_is_permanent_with_replicates_message() -> None:
    error = await REPLICATE.error(REPLICATE.fake("400"), TOKEN)
    assert isinstance(error, PermanentProviderError) and "Must be less than or equal to 1440" in str(error)


@pytest.mark.parametrize("mode", ["500", "502", "503"])
async def test_5xx_is_retryable(mode: str) -> None:
    error = await REPLICATE.error(REPLICATE.fake(mode), TOKEN)
    assert type(error) is RetryableProviderError and mode in str(error)


async def test_malformed_json_is_retryable() -> None:
    assert_retryable(await REPLICATE.error(REPLICATE.fake("malformed"), TOKEN), "malformed_response")


async def test_a_hanging_create_times_out() -> None:
    assert_retryable(await REPLICATE.error(REPLICATE.fake("timeout", timeout_s=1.0), TOKEN, timeout_s=0.3), "timeout")


@pytest.mark.parametrize("mode", ["401", "403", "400", "500", "error"])
async def test_token_never_in_error_text(mode: str) -> None:
    await check_token_never_in_errors(REPLICATE, TOKEN, mode)


def test_config_needs_exactly_one_target() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ReplicateConfig(base_url="http://x")
    with pytest.raises(ValidationError, match="exactly one"):
        ReplicateConfig(base_url="http://x", model=MODEL, version="abc")
    with pytest.raises(ValidationError):
        ReplicateConfig(model=MODEL, prefer_wait_s=61)


def test_input_mapping() -> None:
    provider = ReplicateProvider(ReplicateConfig(model=MODEL, extra_input={"num_inference_steps": 4}),
                                 httpx.AsyncClient())
    path, body = provider._create_request(SPEC)
    assert path == f"/v1/models/{MODEL}/predictions"
    assert body == {"input": {"prompt": SPEC.prompt, "negative_prompt": "blurry", "width": 256, "height": 192,
                              "seed": 7, "num_inference_steps": 4}}
    bare = ImageSpec(prompt="frost bow")
    _path, body = provider._create_request(bare)
    assert set(body["input"]) == {"prompt", "width", "height", "num_inference_steps"}
