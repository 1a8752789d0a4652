"""Real providers' protocols through the real pipeline: failover across providers and keys."""

from __future__ import annotations

import httpx
import pytest
import yaml

from services.fakeproviders import gradio, replicate
from services.fakeproviders.base import FakeProvider, Knobs, fingerprint
from services.fakeproviders.openai_images import create_app
from services.fakeproviders.server import serve_fake
from tests.helpers import job_finished

pytestmark = pytest.mark.e2e

RATE_LIMITED_KEY = "sk-e2e-rate-limited-key-0001"
GOOD_KEY = "sk-e2e-good-key-0000000000002"
REPLICATE_KEY = "r8_e2e-replicate-key-000000000004"


async def test_a_down_provider_and_a_throttled_key_do_not_stop_the_jobs(running_pipeline, tmp_path):
    down = FakeProvider("space-a", Knobs(always_fail="503"))
    healthy = FakeProvider("space-b", Knobs(rejected_keys={RATE_LIMITED_KEY: "429"}, retry_after_s=120))
    async with serve_fake(create_app(down)) as url_a, serve_fake(create_app(healthy)) as url_b:
        providers = tmp_path / "providers.yaml"
        providers.write_text(yaml.safe_dump({
            "primary": [
                {"name": "space-a", "type": "openai", "cost_usd": 0, "keys_env": "E2E_KEYS_A",
                 "options": {"base_url": url_a}},
                {"name": "space-b", "type": "openai", "cost_usd": 0, "keys_env": "E2E_KEYS_B",
                 "options": {"base_url": url_b}},
            ],
            "fallback": [{"name": "procedural", "type": "procedural"}],
        }))
        env = {"FORGELINE_GENERATOR_PROVIDERS_FILE": str(providers), "E2E_KEYS_A": "sk-e2e-key-for-space-a-00003",
               "E2E_KEYS_B": f"{RATE_LIMITED_KEY},{GOOD_KEY}"}
        async with running_pipeline(env=env) as p, httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            # One job after the other: calls already in flight when the first 429 lands may still
            # hold the throttled key; what must hold is that no call picks it after that.
            views = []
            for i in range(4):
                response = await http.post("/v1/generations", json={"prompt": f"ice axe {i}", "width": 64,
                                                                    "height": 64})
                views.append(await job_finished(http, response.json()["job_id"]))

    assert [v["status"] for v in views] == ["completed"] * 4, views
    assert {v["provider"] for v in views} == {"space-b"}
    assert len(down.requests) >= 1, "the down provider was tried first"
    used = [r.key for r in healthy.requests]
    assert used.count(fingerprint(RATE_LIMITED_KEY)) == 1, "the throttled key is not used again before its deadline"
    assert used.count(fingerprint(GOOD_KEY)) == 4


async def test_a_gradio_space_answering_event_error_fails_over_to_the_next_space(running_pipeline, tmp_path):
    broken = FakeProvider("space-broken", Knobs(always_fail="error"))
    healthy = FakeProvider("space-healthy")
    async with serve_fake(gradio.create_app(broken)) as url_a, serve_fake(gradio.create_app(healthy)) as url_b:
        providers = tmp_path / "providers.yaml"
        providers.write_text(yaml.safe_dump({
            "primary": [
                {"name": "space-broken", "type": "gradio", "options": {"space": "e2e/broken", "base_url": url_a}},
                {"name": "space-healthy", "type": "gradio", "options": {"space": "e2e/healthy", "base_url": url_b}},
            ],
            "fallback": [{"name": "procedural", "type": "procedural"}],
        }))
        env = {"FORGELINE_GENERATOR_PROVIDERS_FILE": str(providers)}
        async with running_pipeline(env=env) as p, httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            jobs = []
            for i in range(2):
                response = await http.post("/v1/generations", json={"prompt": f"lantern {i}", "width": 64,
                                                                    "height": 64})
                jobs.append(response.json()["job_id"])
            views = [await job_finished(http, job) for job in jobs]

    assert [v["status"] for v in views] == ["completed"] * 2, views
    assert {v["provider"] for v in views} == {"space-healthy"}
    assert any(r.method == "POST" and r.path.endswith("/queue/join") for r in broken.requests), "the broken Space was tried"
    assert sum(r.method == "POST" and r.path.endswith("/queue/join") for r in healthy.requests) == 2


async def test_a_replicate_prediction_slow_to_start_is_polled_until_it_completes(running_pipeline, tmp_path):
    slow = FakeProvider("replicate-slow", Knobs(slow_start_polls=3))
    async with serve_fake(replicate.create_app(slow)) as url:
        providers = tmp_path / "providers.yaml"
        providers.write_text(yaml.safe_dump({
            "primary": [
                {"name": "replicate-slow", "type": "replicate", "keys_env": "E2E_KEYS_REPLICATE",
                 "options": {"model": "black-forest-labs/flux-schnell", "base_url": url, "poll_interval_s": 0.2,
                             "prefer_wait_s": 1}},
            ],
            "fallback": [{"name": "procedural", "type": "procedural"}],
        }))
        env = {"FORGELINE_GENERATOR_PROVIDERS_FILE": str(providers), "E2E_KEYS_REPLICATE": REPLICATE_KEY}
        async with running_pipeline(env=env) as p, httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            response = await http.post("/v1/generations", json={"prompt": "slow kettle", "width": 64, "height": 64})
            view = await job_finished(http, response.json()["job_id"])

    assert view["status"] == "completed", view
    assert view["provider"] == "replicate-slow"
    polls = [r for r in slow.requests if r.method == "GET" and r.path.startswith("/v1/predictions/")]
    assert len(polls) >= 3, slow.requests
    assert {r.key for r in slow.requests} == {fingerprint(REPLICATE_KEY)}
