"""Cancelling jobs through the real pipeline: during a slow Replicate prediction, while queued behind it,
and before routing (Kafka-native); each ends `canceled` with one terminal event and no charge."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import httpx
import pytest
import yaml

from services.common import contracts as c
from services.common.kafka import make_producer, send_event
from services.fakeproviders import replicate
from services.fakeproviders.base import FakeProvider, Knobs
from services.fakeproviders.server import serve_fake
from tests.helpers import records_for

pytestmark = pytest.mark.e2e

REPLICATE_KEY = "r8_e2e-replicate-key-000000000007"
BODY = {"width": 64, "height": 64}


def _providers(tmp_path, url: str):
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump({
        "primary": [{"name": "replicate-slow", "type": "replicate", "keys_env": "E2E_KEYS_REPLICATE",
                     "cost_usd": 0.0023,
                     "options": {"model": "black-forest-labs/flux-schnell", "base_url": url, "poll_interval_s": 0.2,
                                 "prefer_wait_s": 1, "timeout_s": 600}}],
        "fallback": [{"name": "procedural", "type": "procedural"}],
    }))
    # One call at a time on primary, so a second job waits in the queue behind the first.
    return {"FORGELINE_GENERATOR_PROVIDERS_FILE": str(path), "E2E_KEYS_REPLICATE": REPLICATE_KEY,
            "FORGELINE_ROUTER_DEPTH_HIGH": "50", "FORGELINE_ROUTER_DEPTH_LOW": "40"}, {
            "generator-primary": {"FORGELINE_GENERATOR_CONCURRENCY": "1"}}


@asynccontextmanager
async def _slow_replicate_pipeline(running_pipeline, tmp_path, polls: int):
    """The pipeline with a fake Replicate on primary whose predictions stay running for ``polls`` polls."""
    slow = FakeProvider("replicate-slow", Knobs(slow_start_polls=polls))
    async with serve_fake(replicate.create_app(slow)) as url:
        env, per_service = _providers(tmp_path, url)
        async with running_pipeline(env=env, per_service_env=per_service) as p, \
                httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            yield slow, p, http


async def _status(http: httpx.AsyncClient, job_id: str, wanted: set[str], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = (await http.get(f"/v1/generations/{job_id}")).json()
        if view.get("status") in wanted:
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {wanted}: {view}")


async def test_cancel_a_running_prediction_and_a_job_queued_behind_it(running_pipeline, tmp_path):
    async with _slow_replicate_pipeline(running_pipeline, tmp_path, 10_000) as (slow, p, http):
        running = (await http.post("/v1/generations", json=BODY | {"prompt": "slow kettle"})).json()["job_id"]
        await _status(http, running, {"generating"})
        queued = (await http.post("/v1/generations", json=BODY | {"prompt": "queued teapot"})).json()["job_id"]
        assert (await _status(http, queued, {"routed"}))["route"] == "primary"

        answer = await http.post(f"/v1/generations/{queued}/cancel", json={"reason": "player left the shop"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "canceled"
        assert answer.json()["error"]["message"] == "canceled: player left the shop"

        canceled = (await http.post(f"/v1/generations/{running}/cancel")).json()
        assert canceled["status"] == "canceled", canceled
        again = await http.post(f"/v1/generations/{running}/cancel")
        assert again.status_code == 409 and "ended already (canceled)" in again.json()["detail"]

        # The generator sees the cancel at its next poll and cancels the prediction at the provider.
        deadline = time.monotonic() + 30
        while not any(r.path.endswith("/cancel") for r in slow.requests) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        failed = {job: await records_for(p.connections, p.topics.name("generation.failed"), job)
                  for job in (running, queued)}
        completed = await records_for(p.connections, p.topics.name("generation.completed"), running, settle_s=0.5)

    creates = [r for r in slow.requests if r.method == "POST" and r.path.endswith("/predictions")]
    cancels = [r for r in slow.requests if r.path.endswith("/cancel")]
    assert len(creates) == 1, slow.requests  # the queued job never reached the provider
    assert len(cancels) == 1, slow.requests
    assert slow.charges == []  # a cancelled prediction delivers nothing and is never billed
    for job, records in failed.items():
        [record] = records  # one terminal event each
        event = c.decode(c.GenerationFailed, record.value)
        assert event.canceled and event.error.stage == "ingest", event
    assert completed == []


async def test_kafka_native_cancel_before_routing(running_pipeline, tmp_path):
    async with _slow_replicate_pipeline(running_pipeline, tmp_path, 1) as (slow, p, http):
        producer = make_producer(p.connections.kafka)
        await producer.start()
        try:
            job = c.new_job_id()
            await send_event(producer, p.topics.name("generation.cancel"),
                             c.GenerationCancelRequested(job_id=job, tenant="kafka-native", reason="not needed"))
            view = await _status(http, job, {"canceled"})
            await send_event(producer, p.topics.name("generation.requested"), c.GenerationRequested(
                job_id=job, tenant="kafka-native", spec=c.ImageSpec(prompt="never drawn", width=64, height=64)))
            # A later job: once it completed, the router has long read the cancelled one's request.
            later = c.GenerationRequested(job_id=c.new_job_id(), tenant="kafka-native",
                                          spec=c.ImageSpec(prompt="drawn", width=64, height=64))
            await send_event(producer, p.topics.name("generation.requested"), later)
            done = await _status(http, later.job_id, {"completed", "failed"})
        finally:
            await producer.stop()
        [record] = await records_for(p.connections, p.topics.name("generation.failed"), job)

    assert view["error"]["stage"] == "router" and view["error"]["code"] == "canceled", view
    assert done["status"] == "completed", done
    assert c.decode(c.GenerationFailed, record.value).canceled
    creates = [r for r in slow.requests if r.method == "POST" and r.path.endswith("/predictions")]
    assert len(creates) == 1, slow.requests  # the later job's; the cancelled one never reached the provider
