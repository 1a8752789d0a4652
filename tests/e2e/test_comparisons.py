"""Comparisons through the real processes, broker, Redis and S3: on their own, and after a generation."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import pytest
from PIL import Image, ImageFilter

from services.common import contracts as c
from services.common.kafka import H_DLQ_REASON, headers_of, make_producer
from services.comparer import perceptual
from services.fakeproviders import openai_chat
from services.fakeproviders.base import FakeProvider
from services.fakeproviders.server import serve_fake
from services.providers.procedural import render_icon
from services.storage.handlers import comparison_id_for
from tests.helpers import records_for

pytestmark = pytest.mark.e2e

PROMPT = "flaming obsidian greatsword"
FAKE_VLM_KEY = "sk-test-vlm-e2e-not-a-real-key-0001"


def data_url(raw: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64," + base64.b64encode(raw).decode()


def blurred(raw: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(raw)).convert("RGB").filter(ImageFilter.GaussianBlur(2)).save(buffer, format="PNG")
    return buffer.getvalue()


async def _job(http: httpx.AsyncClient, path: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = await http.get(path)
        if response.status_code == 200 and response.json()["status"] in ("completed", "failed"):
            return response.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} not finished after {timeout_s} s: {response.text}")


async def _events(connections, topic: str, model, key: str) -> list:
    return [c.decode(model, record.value) for record in await records_for(connections, topic, key)]


async def test_a_generation_with_a_reference_image_completes_with_its_comparison(running_pipeline):
    spec = c.ImageSpec(prompt=PROMPT, width=256, height=256, seed=77)
    expected = render_icon(spec)
    reference = blurred(expected)  # "what the designer drew": close to what the provider makes
    body = {"prompt": PROMPT, "width": 256, "height": 256, "seed": 77, "reference_image": data_url(reference)}
    async with running_pipeline() as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            accepted = await http.post("/v1/generations", json=body)
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            job = await _job(http, f"/v1/generations/{job_id}")
            comparison = await _job(http, f"/v1/comparisons/{comparison_id_for(job_id)}")
            image = await http.get(job["url"])
        completed = await _events(p.connections, p.topics.name("generation.completed"), c.GenerationCompleted, job_id)
        compared = await _events(p.connections, p.topics.name("comparison.completed"), c.ComparisonCompleted,
                                 comparison_id_for(job_id))

    assert job["status"] == "completed", job
    assert image.content == expected, "the bytes at the URL are not the generated image"
    assert len(completed) == 1, "exactly one completed event per job"
    attached = completed[0].comparison
    assert attached is not None and completed[0].comparison_error is None
    # The comparer scored exactly these two images: its answer equals a local comparison of them.
    local = perceptual.compare(reference, expected, PROMPT)
    assert attached.method == "perceptual" and attached.fallback_reason is None
    assert attached.score == pytest.approx(local.score, abs=0.01)
    assert attached.score >= 85 and attached.band == "Excellent"
    assert job["result"]["comparison"]["score"] == attached.score  # the status shows it too
    assert comparison["status"] == "completed" and comparison["generation_job_id"] == job_id
    assert comparison["result"]["score"] == attached.score
    assert len(compared) == 1 and compared[0].generation_job_id == job_id


async def test_comparisons_api_waits_caches_and_refuses_bad_images(running_pipeline):
    target = render_icon(c.ImageSpec(prompt=PROMPT, width=128, height=128, seed=5))
    unrelated = render_icon(c.ImageSpec(prompt="frost potion", width=128, height=128, seed=9))
    async with running_pipeline() as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=60) as http:
            generated = await http.post("/v1/generations", json={"prompt": PROMPT, "width": 128, "height": 128,
                                                                  "seed": 5})
            job = await _job(http, f"/v1/generations/{generated.json()['job_id']}")
            body = {"target_image": data_url(target), "generated_image": job["job_id"], "original_prompt": PROMPT}
            first = await http.post("/v1/comparisons?wait=30", json=body)
            again = await http.post("/v1/comparisons?wait=30", json=body)
            other = await http.post("/v1/comparisons?wait=30", json=body | {"generated_image": data_url(unrelated)})
            queued = await http.post("/v1/comparisons", json=body)
            fetched = await _job(http, f"/v1/comparisons/{queued.json()['comparison_id']}")
            gif = await http.post("/v1/comparisons", json=body | {"target_image": "data:image/png;base64,"
                                  + base64.b64encode(b"GIF89a" + b"\0" * 64).decode()})
            private = await http.post("/v1/comparisons", json=body | {"target_image": "https://10.1.2.3/a.png"})
            metadata = await http.post("/v1/comparisons",
                                       json=body | {"target_image": "https://169.254.169.254/latest/meta-data/"})
            unknown = await http.post("/v1/comparisons", json=body | {"generated_image": "no-such-job-123"})
            missing = await http.get("/v1/comparisons/nosuchcomparison1")

    assert first.status_code == 200, first.text
    result = first.json()
    assert result["status"] == "completed" and result["cached"] is False
    assert result["result"]["score"] >= 95 and result["result"]["method"] == "perceptual"  # the very same bytes
    assert again.status_code == 200 and again.json()["cached"] is True
    assert again.json()["result"]["score"] == result["result"]["score"]
    assert other.status_code == 200 and other.json()["result"]["score"] < 70
    assert queued.status_code == 202 and queued.json()["status"] == "queued"
    assert fetched["status"] == "completed" and fetched["result"]["score"] == result["result"]["score"]
    assert gif.status_code == 422 and gif.json()["detail"][0]["loc"] == ["body", "target_image"]
    assert "GIF" in gif.json()["detail"][0]["msg"] or "PNG" in gif.json()["detail"][0]["msg"]
    assert private.status_code == 422 and private.json()["detail"][0]["loc"] == ["body", "target_image"]
    assert metadata.status_code == 422 and "metadata" in metadata.json()["detail"][0]["msg"]
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "generated_image"]
    assert missing.status_code == 404


async def test_the_vlm_judges_and_garbage_falls_back_to_the_perceptual_comparer(running_pipeline):
    target = render_icon(c.ImageSpec(prompt=PROMPT, width=128, height=128, seed=5))
    generated = blurred(target)
    fake = FakeProvider("vlm")
    app = openai_chat.create_app(fake, answer="fenced")
    async with serve_fake(app) as vlm_url, running_pipeline(per_service_env={"comparer": {
        "FORGELINE_COMPARER_VLM_BASE_URL": vlm_url, "FORGELINE_COMPARER_VLM_KEYS": FAKE_VLM_KEY,
    }}) as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=60) as http:
            body = {"target_image": data_url(target), "generated_image": data_url(generated),
                    "original_prompt": PROMPT}
            judged = (await http.post("/v1/comparisons?wait=30", json=body)).json()
            app.state.answer = "garbage"
            fallback = (await http.post("/v1/comparisons?wait=30",
                                        json=body | {"original_prompt": PROMPT + ", glowing"})).json()
        log = p.log("comparer")

    local = perceptual.compare(target, generated, PROMPT)
    assert judged["status"] == "completed", judged
    assert judged["result"]["method"] == "vlm"
    assert judged["result"]["score"] == pytest.approx(local.score, abs=0.01)  # the fake VLM's own judgement
    assert judged["result"]["provider"].startswith("siliconflow-vlm:")  # the key's fingerprint, never the key
    assert judged["result"]["model"] == "Qwen/Qwen3-VL-8B-Instruct"
    assert fallback["status"] == "completed", fallback
    assert fallback["result"]["method"] == "perceptual"
    assert "unparseable" in fallback["result"]["fallback_reason"] or "JSON" in fallback["result"]["fallback_reason"]
    assert len(fake.requests) == 2, "an unparseable answer is not paid for again"
    assert FAKE_VLM_KEY not in log


async def test_a_bad_comparison_message_goes_to_the_dlq_and_the_partition_keeps_moving(running_pipeline):
    target = render_icon(c.ImageSpec(prompt=PROMPT, width=64, height=64, seed=1))
    async with running_pipeline(services=["comparer", "ingest"]) as p:
        requested = p.topics.name("comparison.requested")
        valid = c.ComparisonRequested(job_id=c.new_job_id(), tenant="direct-kafka", original_prompt=PROMPT,
                                      target_image=c.DataUrlImage(data_url=data_url(target)),
                                      generated_image=c.DataUrlImage(data_url=data_url(blurred(target))))
        producer = make_producer(p.connections.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(requested, b'{"target_image": 42}', key=b"bad-comparison-1", partition=0)
            await producer.send_and_wait(requested, valid.to_json_bytes(), key=valid.job_id.encode(), partition=0)
        finally:
            await producer.stop()
        compared = await _events(p.connections, p.topics.name("comparison.completed"), c.ComparisonCompleted,
                                 valid.job_id)
        letters = await records_for(p.connections, p.topics.dlq("comparison.requested"), "bad-comparison-1")

    expected = perceptual.compare(target, blurred(target), PROMPT).score
    assert len(compared) == 1 and compared[0].result.score == pytest.approx(expected, abs=0.01)
    assert len(letters) == 1 and letters[0].value == b'{"target_image": 42}'
    assert "invalid ComparisonRequested" in headers_of(letters[0])[H_DLQ_REASON]
