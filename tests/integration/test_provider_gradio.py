"""The Hugging Face Spaces (Gradio) adapter against the fake Space, over real HTTP on loopback."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from services.common.contracts import ImageSpec
from services.fakeproviders.base import FakeProvider, Knobs
from services.fakeproviders.gradio import create_app
from services.fakeproviders.server import serve_fake
from services.providers.gradio import GradioConfig, GradioSpaceProvider
from services.providers.port import (
    KeyRejectedError,
    PermanentProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from tests.integration.provider_support import (
    ProviderUnderTest,
    assert_retryable,
    check_token_never_in_errors,
)

pytestmark = pytest.mark.integration

SPACE = "forgeline/sdxl-cpu"
TOKEN = "hf_fake-test-token-not-real-1234"
SPEC = ImageSpec(prompt="flaming obsidian greatsword", width=256, height=192, seed=7)
GRADIO = ProviderUnderTest("gradio", create_app, GradioSpaceProvider, GradioConfig, defaults={"space": SPACE},
                           spec=SPEC)


def posts(sent: list[httpx.Request]) -> list[str]:
    """The paths the adapter POSTed to, seen from the client side (a fake never sees its own 404s)."""
    return [request.url.path for request in sent if request.method == "POST"]


async def test_generates_the_spaces_image() -> None:
    fake, sent = FakeProvider("gradio"), []
    async with GRADIO.adapter(fake, sent=sent) as provider:
        image = await provider.generate(SPEC, None)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    assert image.content_type == "image/png"
    assert (image.provider, image.model, image.deterministic) == (f"hf-space:{SPACE}", SPACE, False)
    assert posts(sent) == ["/gradio_api/call/predict"]  # a Gradio 5 server: the prefixed routes, at once


async def test_falls_back_to_gradio4_routes_once_and_remembers() -> None:
    fake, sent = FakeProvider("gradio"), []
    async with GRADIO.adapter(fake, sent=sent, fake_options={"gradio4": True}) as provider:
        first = await provider.generate(SPEC, None)
        second = await provider.generate(SPEC.model_copy(update={"prompt": "frost bow"}), None)
    assert first.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    assert second.data == fake.image("frost bow", SPEC.width, SPEC.height, SPEC.seed)
    assert posts(sent) == ["/gradio_api/call/predict", "/call/predict", "/call/predict"]


async def test_fixed_prefix_does_not_probe() -> None:
    sent: list[httpx.Request] = []
    async with GRADIO.adapter(sent=sent, fake_options={"gradio4": True}, api_prefix="") as provider:
        await provider.generate(SPEC, None)
    assert posts(sent) == ["/call/predict"]


async def test_heartbeats_keep_a_slow_stream_alive() -> None:
    # 4 heartbeats 0.2 s apart: the stream takes ~1 s, longer than the 0.5 s per-read timeout
    fake = FakeProvider("gradio")
    async with GRADIO.adapter(fake, fake_options={"heartbeats": 4, "heartbeat_interval_s": 0.2},
                              read_timeout_s=0.5) as provider:
        image = await provider.generate(SPEC, None)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)


async def test_endless_heartbeats_hit_the_overall_deadline() -> None:
    error = await GRADIO.error(None, TOKEN, fake_options={"heartbeats": 10_000, "heartbeat_interval_s": 0.05},
                               timeout_s=0.5)
    assert isinstance(error, RetryableProviderError) and error.code == "timeout"


async def test_relative_file_url_resolves_against_the_space() -> None:
    fake = FakeProvider("gradio")
    async with GRADIO.adapter(fake, fake_options={"relative_urls": True}) as provider:
        image = await provider.generate(SPEC, None)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)


async def test_configured_inputs_and_literals() -> None:
    fake_inputs = ("prompt", "sampler", "guidance", "unused", "seed", "width", "height")
    inputs = ["prompt", {"value": "Euler a"}, 7.5, None, "seed", "width", "height"]
    fake = FakeProvider("gradio")
    async with GRADIO.adapter(fake, fake_options={"inputs": fake_inputs, "api_names": ("infer",)},
                              inputs=inputs, api_name="infer") as provider:
        image = await provider.generate(SPEC, None)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    with pytest.raises(ValidationError, match="unknown input"):
        GradioConfig(space=SPACE, inputs=["promt"])


async def test_private_space_gets_the_token() -> None:
    async with GRADIO.adapter(FakeProvider("gradio", Knobs(accepted_keys=[TOKEN]))) as provider:
        image = await provider.generate(SPEC, TOKEN)
        assert image.content_type == "image/png"
        with pytest.raises(KeyRejectedError):
            await provider.generate(SPEC, None)


async def test_space_url_derives_from_its_name() -> None:
    assert GradioConfig(space="Some_Owner/My.Space").base_url == "https://some-owner-my-space.hf.space"


@pytest.mark.parametrize("mode,text", [("error", "CUDA out of memory"), ("quota", "exceeded your GPU quota")])
async def test_error_event_is_retryable_so_the_caller_fails_over(mode: str, text: str) -> None:
    error = await GRADIO.error(GRADIO.fake(mode), TOKEN)
    assert_retryable(error, "space_error")
    assert text in str(error)


async def test_content_refusal_in_error_event_is_permanent() -> None:
    provider = GradioSpaceProvider(GradioConfig(space=SPACE), httpx.AsyncClient())
    assert isinstance(provider._space_error('"NSFW content detected"', None), PermanentProviderError)
    assert provider._space_error("null", None).code == "space_error"


async def test_429_is_rate_limited_with_retry_after() -> None:
    error = await GRADIO.error(GRADIO.fake("429", retry_after_s=12), TOKEN)
    assert isinstance(error, RateLimitedError) and error.retry_after_s == 12


@pytest.mark.parametrize("mode", ["401", "403"])
async def test_401_403_reject_the_key(mode: str) -> None:
    assert isinstance(await GRADIO.error(GRADIO.fake(mode), TOKEN), KeyRejectedError)


async def test_400_is_permanent_with_the_spaces_message() -> None:
    error = await GRADIO.error(GRADIO.fake("400"), TOKEN)
    assert isinstance(error, PermanentProviderError) and "Invalid input" in str(error)


@pytest.mark.parametrize("mode", ["500", "502", "503"])
async def test_5xx_is_retryable(mode: str) -> None:
    error = await GRADIO.error(GRADIO.fake(mode), TOKEN)
    assert type(error) is RetryableProviderError and mode in str(error)


async def test_malformed_json_is_retryable() -> None:
    assert_retryable(await GRADIO.error(GRADIO.fake("malformed"), TOKEN), "malformed_response")


async def test_a_hanging_space_times_out() -> None:
    assert_retryable(await GRADIO.error(GRADIO.fake("timeout", timeout_s=1.0), TOKEN, timeout_s=0.3), "timeout")


async def test_connection_refused_is_retryable() -> None:
    async with serve_fake(create_app(FakeProvider("gradio"))) as url:
        pass  # the server is gone: its port refuses connections
    async with httpx.AsyncClient() as http:
        with pytest.raises(RetryableProviderError) as caught:
            await GRADIO.build(url, http).generate(SPEC, TOKEN)
    assert caught.value.code == "connection"


@pytest.mark.parametrize("mode", ["401", "429", "500", "error"])
async def test_token_never_in_error_text(mode: str) -> None:
    await check_token_never_in_errors(GRADIO, TOKEN, mode)


async def test_silence_longer_than_the_read_timeout_is_a_timeout() -> None:
    error = await GRADIO.error(None, TOKEN, fake_options={"heartbeats": 2, "heartbeat_interval_s": 0.8},
                               read_timeout_s=0.3)
    assert isinstance(error, RetryableProviderError) and error.code == "timeout"
