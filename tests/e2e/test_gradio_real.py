"""The Gradio adapter against REAL ``gradio`` servers, one per major version (4.44.1, 5.50.0, 6.31.0).

Each version runs ``tests/gradio_real/space_app.py`` from its own virtualenv, cached in
``~/.cache/forgeline/gradio-<version>/`` (created on first use, about 20–30 s each), started once
per session. The fast tests use the fake Space (``services/fakeproviders/gradio.py``), which
follows what these servers answer.
"""

from __future__ import annotations

import asyncio
import io
from contextlib import ExitStack

import httpx
import pytest
import yaml
from PIL import Image

from services.common.contracts import ImageSpec
from services.fakeproviders.base import FakeProvider
from services.fakeproviders.gradio import create_app
from services.fakeproviders.server import serve_fake
from services.providers.gradio import GradioConfig, GradioSpaceProvider
from services.providers.port import PermanentProviderError, RetryableProviderError
from tests.gradio_real.drawing import draw
from tests.gradio_real.servers import API_NAME, RealSpace, running_spaces
from tests.gradio_real.venvs import VERSIONS, VenvError
from tests.helpers import job_finished

pytestmark = pytest.mark.e2e

MAX_SEED = 2**31 - 1
REFUSAL = "NSFW content detected. Please try again with a different prompt."


@pytest.fixture(scope="session")
def real_spaces(tmp_path_factory):
    with ExitStack() as stack:
        try:
            spaces = stack.enter_context(running_spaces(tmp_path_factory.mktemp("gradio"),
                                                        progress=lambda m: print(f"[gradio] {m}", flush=True)))
        except (VenvError, RuntimeError) as exc:
            pytest.fail(f"the real gradio servers could not be had: {exc}", pytrace=False)
        yield spaces


def pixels(data: bytes) -> bytes:
    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def drawn(prompt: str, seed: int, width: int, height: int) -> bytes:
    return draw(prompt, seed, width, height).tobytes()


def adapter(space: RealSpace, http: httpx.AsyncClient, **options) -> GradioSpaceProvider:
    return GradioSpaceProvider(GradioConfig(**{"space": f"e2e/gradio-{space.version}", "base_url": space.url,
                                               "api_name": API_NAME} | options), http)


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_adapter_against_a_real_space(real_spaces, version: str) -> None:
    space = real_spaces[version]
    async with httpx.AsyncClient() as http:
        provider = adapter(space, http)
        image = await provider.generate(ImageSpec(prompt=f"sword {version}", width=128, height=96, seed=7))
        folded = await provider.generate(ImageSpec(prompt=f"big seed {version}", width=64, height=64, seed=2**32 - 1))
        with pytest.raises(RetryableProviderError) as crashed:
            await provider.generate(ImageSpec(prompt="crash now", width=64, height=64))
        with pytest.raises(PermanentProviderError) as refused:
            await provider.generate(ImageSpec(prompt=f"forbidden {version}", width=64, height=64))
        with pytest.raises(PermanentProviderError) as unknown:
            await adapter(space, http, api_name="predict").generate(ImageSpec(prompt="never sent"))

    assert pixels(image.data) == drawn(f"sword {version}", 7, 128, 96)
    assert pixels(folded.data) == drawn(f"big seed {version}", MAX_SEED, 64, 64)
    assert (crashed.value.code, crashed.value.message) == ("space_error",
                                                           "the Space reported an error: The worker ran out of memory")
    assert (refused.value.code, refused.value.message) == ("content_policy", f"the Space reported an error: {REFUSAL}")
    assert unknown.value.code == "space_config"
    assert f"no endpoint /predict; it offers: /generate (Gradio {version})" in unknown.value.message
    calls = space.calls()
    assert [c["prompt"] for c in calls].count(f"forbidden {version}") == 1
    assert "never sent" not in [c["prompt"] for c in calls]
    assert all(c["seed"] <= MAX_SEED for c in calls), "no seed beyond the slider reached the Space"


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_pipeline_on_a_real_one_slot_space(real_spaces, running_pipeline, tmp_path, version: str) -> None:
    """Ten jobs at once on a concurrency_limit=1 Space, a seed past its slider, a crash that fails over
    to the next Space, and a refusal that fails the job after one call."""
    space = real_spaces[version]
    backup = FakeProvider("backup")
    async with serve_fake(create_app(backup, api_names=(API_NAME,))) as backup_url:
        providers = tmp_path / "providers.yaml"
        providers.write_text(yaml.safe_dump({
            "primary": [
                {"name": "space", "type": "gradio",
                 "options": {"space": f"e2e/gradio-{version}", "base_url": space.url, "api_name": API_NAME}},
                {"name": "backup", "type": "gradio",
                 "options": {"space": "e2e/backup", "base_url": backup_url, "api_name": API_NAME}},
            ],
            "fallback": [{"name": "procedural", "type": "procedural"}],
        }))
        # Every job on the free path, however deep its queue gets: the test is the Space's, not the router's.
        env = {"FORGELINE_GENERATOR_PROVIDERS_FILE": str(providers), "FORGELINE_ROUTER_DEPTH_HIGH": "1000",
               "FORGELINE_ROUTER_DEPTH_LOW": "999", "FORGELINE_ROUTER_MAX_WAIT_S": "86400"}
        async with running_pipeline(env=env) as p, httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            asks = [{"prompt": f"axe {version} {i}", "width": 64, "height": 64, "seed": i} for i in range(9)]
            asks.append({"prompt": f"huge seed {version}", "width": 64, "height": 64, "seed": 2**32 - 1})
            asks += [{"prompt": f"crash {version}", "width": 64, "height": 64, "seed": 1},
                     {"prompt": f"forbidden job {version}", "width": 64, "height": 64, "seed": 1}]
            jobs = [(await http.post("/v1/generations", json=ask)).json()["job_id"] for ask in asks]
            views = await asyncio.gather(*(job_finished(http, job) for job in jobs))
            images = [pixels((await http.get(view["url"])).content) for view in views[:10]]

    *drawn_jobs, crashed, refused = views
    assert [(v["status"], v["provider"]) for v in drawn_jobs] == [("completed", "space")] * 10, drawn_jobs
    for ask, image in zip(asks[:10], images, strict=True):
        assert image == drawn(ask["prompt"], ask["seed"] % 2**31, 64, 64)
    assert (crashed["status"], crashed["provider"]) == ("completed", "backup"), crashed
    assert refused["status"] == "failed", refused
    assert (refused["error"]["code"], refused["error"]["provider"]) == ("content_policy", "space")
    assert REFUSAL in refused["error"]["message"]
    prompts = [c["prompt"] for c in space.calls()]
    assert prompts.count(f"forbidden job {version}") == 1, "a refusal is not tried again"
    assert max(c["seed"] for c in space.calls()) <= MAX_SEED
