"""The Hugging Face Spaces (Gradio) adapter against the fake Space (each Gradio version's recorded behaviour),
over real HTTP on loopback; tests/e2e/test_gradio_real.py runs it against the real servers."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from services.common.contracts import ImageSpec
from services.fakeproviders.base import FakeProvider, Knobs
from services.fakeproviders.gradio import REFUSAL, SPACE_ERROR, VERSIONS, create_app
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
    """The paths the adapter POSTed to, seen from the client side."""
    return [request.url.path for request in sent if request.method == "POST"]


def sent_data(sent: list[httpx.Request]) -> list[list]:
    """The ``data`` of every call the adapter queued."""
    return [json.loads(request.content)["data"] for request in sent if request.url.path.endswith("/queue/join")]


@pytest.mark.parametrize("version,prefix", [("4.44.1", ""), ("5.50.0", "/gradio_api"), ("6.31.0", "/gradio_api")])
async def test_reads_the_config_once_and_joins_the_queue_under_its_prefix(version: str, prefix: str) -> None:
    fake, sent = FakeProvider("gradio"), []
    async with GRADIO.adapter(fake, sent=sent, fake_options={"version": version}) as provider:
        first = await provider.generate(SPEC, None)
        second = await provider.generate(SPEC.model_copy(update={"prompt": "frost bow"}), None)
    assert first.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    assert second.data == fake.image("frost bow", SPEC.width, SPEC.height, SPEC.seed)
    assert (first.provider, first.model, first.deterministic) == (f"hf-space:{SPACE}", SPACE, False)
    assert [r.url.path for r in sent if r.method == "GET" and r.url.path == "/config"] == ["/config"]
    assert posts(sent) == [f"{prefix}/queue/join"] * 2
    # mapped by the Space's labels: prompt, negative prompt, seed, randomize seed (off: the job has one), size
    assert sent_data(sent)[0] == [SPEC.prompt, "", 7, False, 256, 192]


async def test_a_wrong_file_url_is_not_trusted() -> None:
    fake = FakeProvider("gradio")
    async with GRADIO.adapter(fake, fake_options={"version": "4.44.1", "wrong_file_urls": True}) as provider:
        image = await provider.generate(SPEC, None)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)


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


async def test_configured_inputs_and_literals() -> None:
    fake_inputs = ("prompt", "sampler", "guidance", "unused", "seed", "width", "height")
    inputs = ["prompt", {"value": "Euler a"}, 7.5, None, "seed", "width", "height"]
    fake, sent = FakeProvider("gradio"), []
    async with GRADIO.adapter(fake, sent=sent, fake_options={"inputs": fake_inputs, "api_names": ("infer",)},
                              inputs=inputs, api_name="infer") as provider:
        image = await provider.generate(SPEC, None)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    assert sent_data(sent) == [[SPEC.prompt, "Euler a", 7.5, None, 7, 256, 192]]
    with pytest.raises(ValidationError, match="unknown input"):
        GradioConfig(space=SPACE, inputs=["promt"])


async def test_wrong_input_count_is_permanent_and_names_the_spaces_inputs() -> None:
    error = await GRADIO.error(None, TOKEN, inputs=["prompt", "seed"])
    assert isinstance(error, PermanentProviderError) and error.code == "space_config"
    assert "takes 6: Prompt (textbox), Negative prompt (textbox), Seed (slider 0–2147483647)" in error.message


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_unknown_api_name_is_permanent_and_names_the_endpoints(version: str) -> None:
    fake = FakeProvider("gradio")
    error = await GRADIO.error(fake, TOKEN, fake_options={"version": version, "api_names": ("generate", "upscale")},
                               api_name="predict")
    assert isinstance(error, PermanentProviderError) and error.code == "space_config"
    assert f"no endpoint /predict; it offers: /generate, /upscale (Gradio {version})" in error.message
    assert not any(r.method == "POST" for r in fake.requests), "nothing was queued"


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_seed_beyond_the_slider_is_folded_into_range(version: str) -> None:
    fake, sent = FakeProvider("gradio"), []
    big = SPEC.model_copy(update={"seed": 2**32 - 1})
    async with GRADIO.adapter(fake, sent=sent, fake_options={"version": version}) as provider:
        image = await provider.generate(big, None)
    assert sent_data(sent)[0][2] == 2**31 - 1  # (2**32-1) folded into 0..2**31-1
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, 2**31 - 1)


async def test_a_size_beyond_the_slider_is_refused_before_the_call() -> None:
    fake = FakeProvider("gradio")
    inputs = ("prompt", "seed", "width", "height")
    error = await GRADIO.error(fake, TOKEN, fake_options={"inputs": inputs, "api_names": ("predict",)},
                               inputs=["prompt", "seed", "width", {"value": 4096}])
    assert isinstance(error, PermanentProviderError) and error.code == "space_config"
    assert "'Height' must be between 64 and 2048, got 4096" in error.message
    assert not any(r.method == "POST" for r in fake.requests)


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_content_refusal_is_permanent_with_the_spaces_text(version: str) -> None:
    refused = SPEC.model_copy(update={"prompt": "something forbidden"})
    async with GRADIO.adapter(fake_options={"version": version}) as provider:
        with pytest.raises(PermanentProviderError) as caught:
            await provider.generate(refused, None)
    assert caught.value.code == "content_policy"
    assert caught.value.message == f"the Space reported an error: {REFUSAL}"  # unquoted on Gradio 4 too


async def test_a_dropped_keep_alive_connection_is_retried_once() -> None:
    """The first POST meets a connection the server closed; the adapter sends it again."""
    fake, dropped = FakeProvider("gradio"), []

    class DropsFirstPost(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.ASGITransport(app=create_app(fake))

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "POST" and not dropped:
                dropped.append(request)
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            return await self.inner.handle_async_request(request)

    async with httpx.AsyncClient(transport=DropsFirstPost()) as http:
        image = await GRADIO.build("http://space.test", http).generate(SPEC, None)
    assert image.data == fake.image(SPEC.prompt, SPEC.width, SPEC.height, SPEC.seed)
    assert len(dropped) == 1 and sum(r.method == "POST" for r in fake.requests) == 1


async def test_private_space_gets_the_token() -> None:
    async with GRADIO.adapter(FakeProvider("gradio", Knobs(accepted_keys=[TOKEN]))) as provider:
        image = await provider.generate(SPEC, TOKEN)
        assert image.content_type == "image/png"
        with pytest.raises(KeyRejectedError):
            await provider.generate(SPEC, None)


async def test_space_url_derives_from_its_name() -> None:
    assert GradioConfig(space="Some_Owner/My.Space").base_url == "https://some-owner-my-space.hf.space"


async def test_an_error_text_is_retryable_so_the_caller_fails_over() -> None:
    error = await GRADIO.error(GRADIO.fake("error"), TOKEN)
    assert_retryable(error, "space_error")
    assert SPACE_ERROR in error.message


async def test_zero_gpu_quota_cools_the_key_for_the_wait_it_names() -> None:
    error = await GRADIO.error(GRADIO.fake("quota"), TOKEN)
    assert isinstance(error, RateLimitedError) and error.code == "gpu_quota"
    assert error.retry_after_s == 59 * 60 and "exceeded your GPU quota" in error.message


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
