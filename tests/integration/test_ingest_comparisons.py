"""POST /v1/comparisons and reference images at the door: real Kafka, Redis and S3, no comparer."""

from __future__ import annotations

import base64
import hashlib
import io

import pytest
from PIL import Image

from services.common.blobstore import S3BlobStore
from services.common.contracts import (
    ComparisonRequested,
    GenerationRequested,
    HttpsImage,
    JobImage,
    StoredImage,
    decode,
)
from services.ingest.settings import IngestSettings
from tests.integration.ingest_support import Api, api, consume, locs, requested_count

pytestmark = pytest.mark.integration

PROMPT = "frost crystal longbow"


def png(width: int = 64, height: int = 64, colour: str = "teal") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(raw: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64," + base64.b64encode(raw).decode()


async def test_a_comparison_is_queued_with_its_images_stored_as_claim_checks(client: Api, connections):
    target, generated = png(colour="teal"), png(colour="orange")
    response = await client.http.post("/v1/comparisons", json={
        "target_image": data_url(target), "generated_image": data_url(generated), "original_prompt": PROMPT})

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["status_url"] == f"/v1/comparisons/{body['comparison_id']}"
    [record] = await consume(connections, client.deps.topics.name("comparison.requested"), 1)
    event = decode(ComparisonRequested, record.value)
    assert event.job_id == body["comparison_id"] and event.original_prompt == PROMPT
    assert len(record.value) < 2_000, "images travel by reference, not inline"
    blobs = S3BlobStore(connections.s3)
    for ref, raw in ((event.target_image, target), (event.generated_image, generated)):
        assert isinstance(ref, StoredImage) and ref.sha256 == hashlib.sha256(raw).hexdigest()
        assert ref.object_key.startswith("inputs/")
        assert await blobs.get(ref.object_key) == raw  # the very bytes that were sent
    fetched = await client.http.get(body["status_url"])
    assert fetched.status_code == 200 and fetched.json()["status"] == "queued"
    assert (await client.http.get(f"/v1/generations/{body['comparison_id']}")).json()["kind"] == "comparison"


async def test_https_urls_and_job_ids_pass_as_references(client: Api, connections):
    done = "done-job-0001"
    await client.deps.jobs.update(done, "completed", tenant="public", result={"object_key": "images/x.png"})
    response = await client.http.post("/v1/comparisons", json={
        "target_image": "https://cdn.example.com/concept/sword.png?sig=abc", "generated_image": done,
        "original_prompt": PROMPT})

    assert response.status_code == 202, response.text
    [record] = await consume(connections, client.deps.topics.name("comparison.requested"), 1)
    event = decode(ComparisonRequested, record.value)
    assert event.target_image == HttpsImage(url="https://cdn.example.com/concept/sword.png?sig=abc")
    assert event.generated_image == JobImage(job_id=done)


@pytest.mark.parametrize(("field", "value", "code"), [
    ("target_image", data_url(b"GIF89a" + b"\0" * 40), "unsupported_type"),
    ("target_image", "data:image/png;base64,not base64!", "not_base64"),
    ("target_image", data_url(png(5000, 8)), "too_many_pixels"),
    ("target_image", data_url(png()[:60]), "undecodable"),
    ("target_image", "https://127.0.0.1/a.png", "url_refused"),
    ("target_image", "https://10.0.0.5/a.png", "url_refused"),
    ("target_image", "https://169.254.169.254/latest/meta-data/", "url_refused"),
    ("target_image", "http://cdn.example.com/a.png", "url_refused"),
    ("target_image", "ftp://cdn.example.com/a.png", "url_refused"),
    ("generated_image", "no-such-job-0001", "job_not_found"),
])
async def test_bad_images_are_422_naming_the_field_and_nothing_is_queued(client: Api, field, value, code):
    body = {"target_image": data_url(png()), "generated_image": data_url(png()), "original_prompt": PROMPT}
    response = await client.http.post("/v1/comparisons", json=body | {field: value})

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field] and error["type"] == code
    assert error["msg"]


async def test_an_unfinished_generation_cannot_be_compared_yet(client: Api):
    await client.deps.jobs.update("running-job-01", "routed", tenant="public")
    response = await client.http.post("/v1/comparisons", json={
        "target_image": data_url(png()), "generated_image": "running-job-01", "original_prompt": PROMPT})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "job_not_completed"


async def test_an_image_over_10_mb_is_413_naming_the_field(client: Api):
    # Valid PNG signature, then 10 MB of padding: refused on size before anything decodes it.
    oversized = data_url(png() + b"\0" * (10 * 1024 * 1024))
    response = await client.http.post("/v1/comparisons", json={
        "target_image": oversized, "generated_image": data_url(png()), "original_prompt": PROMPT})

    assert response.status_code == 413, response.text
    assert "target_image" in response.json()["detail"]


async def test_the_comparison_body_limit_is_its_own(connections, topics):
    settings = IngestSettings(max_body_bytes=4096, max_comparison_body_bytes=64 * 1024)
    body = {"target_image": data_url(png(200, 200)), "generated_image": data_url(png(200, 200)),
            "original_prompt": PROMPT}
    async with api(connections, settings) as small:
        comparison = await small.http.post("/v1/comparisons", json=body)
        generation = await small.http.post("/v1/generations", json={"prompt": PROMPT,
                                                                     "reference_image": body["target_image"] + "A" * 8192})
    assert comparison.status_code == 202, comparison.text
    assert generation.status_code == 413


async def test_a_reference_image_is_checked_and_stored_before_the_job_is_queued(client: Api, connections):
    reference = png(colour="crimson")
    bad = await client.http.post("/v1/generations", json={"prompt": PROMPT,
                                                          "reference_image": data_url(b"<html>hi</html>")})
    assert bad.status_code == 422 and locs(bad) == [["body", "reference_image"]]
    assert await requested_count(client.deps) == 0

    good = await client.http.post("/v1/generations", json={"prompt": PROMPT, "reference_image": data_url(reference)})
    assert good.status_code == 202, good.text
    [record] = await consume(connections, client.deps.topics.name("generation.requested"), 1)
    event = decode(GenerationRequested, record.value)
    assert isinstance(event.reference_image, StoredImage)
    assert await S3BlobStore(connections.s3).get(event.reference_image.object_key) == reference


async def test_waiting_gives_the_result_once_it_is_there_and_202_when_it_is_not(client: Api):
    response = await client.http.post("/v1/comparisons?wait=0.5", json={
        "target_image": data_url(png()), "generated_image": data_url(png()), "original_prompt": PROMPT})
    assert response.status_code == 202 and response.json()["status"] == "queued"  # no comparer runs here
    missing = await client.http.get("/v1/comparisons/unknown-comparison-1")
    assert missing.status_code == 404
