"""The storage handler on the port fakes: content-addressed upload, the result cache, the completed event."""

from __future__ import annotations

import hashlib

import pytest

from services.common import contracts as c
from services.common.blobstore import IMMUTABLE_CACHE_CONTROL, BlobStoreError
from services.common.errors import Retryable
from services.common.topics import Topics
from services.storage.handlers import StoreHandler, comparison_id_for
from tests.fakes import (
    FAKE_PNG,
    MemoryBlobStore,
    MemoryJobStore,
    MemoryRecentJobs,
    MemoryResultCache,
    MemoryTerminalGuard,
)

TOPICS = Topics("t")
DIGEST = hashlib.sha256(FAKE_PNG).hexdigest()
KEY = f"images/{DIGEST[:2]}/{DIGEST}.png"


class _DownStore(MemoryBlobStore):
    async def put(self, key: str, data: bytes, **headers: str) -> str:
        raise BlobStoreError("the object store answered 503")


def _handler(store: MemoryBlobStore | None = None) -> StoreHandler:
    return StoreHandler(store=store or MemoryBlobStore(), cache=MemoryResultCache(), topics=TOPICS,
                        jobs=MemoryJobStore(), guard=MemoryTerminalGuard(), key_prefix="images/")


def _generated(*, image: bytes = FAKE_PNG, placeholder: bool = False,
               reference_image: str | None = None) -> c.GenerationGenerated:
    request = c.GenerationRequested(job_id=c.new_job_id(), tenant="studio", metadata={"slot": "3"},
                                    spec=c.ImageSpec(prompt="ice sword"), reference_image=reference_image)
    routed = c.GenerationRouted.from_request(
        request, c.RouteDecision(path="fallback", reason="test", primary_depth=12, threshold=10))
    return c.GenerationGenerated.from_routed(routed, image=image, content_type="image/png", provider="replicate",
                                             model="m", deterministic=False, placeholder=placeholder)


async def test_an_image_is_uploaded_under_its_digest_cached_and_published_as_completed():
    handler = _handler()
    generated = _generated()

    outcome = await handler.handle(generated)

    stored = handler.store.objects[KEY]
    assert (stored.data, stored.content_type, stored.cache_control) == (FAKE_PNG, "image/png",
                                                                       IMMUTABLE_CACHE_CONTROL)
    [output] = outcome.outputs
    assert output.topic == "t.generation.completed"
    done = output.event
    assert isinstance(done, c.GenerationCompleted)
    assert (done.job_id, done.url, done.object_key, done.sha256, done.size_bytes) == (
        generated.job_id, handler.store.public_url(KEY), KEY, DIGEST, len(FAKE_PNG))
    assert (done.path, done.provider, done.cached, done.placeholder, done.metadata) == (
        "fallback", "replicate", False, False, {"slot": "3"})
    assert done.timings.stored_at is not None and done.timings.completed_at is not None
    assert await handler.cache.get(generated.spec.cache_key("studio")) == done  # its tenant's, by default
    assert await handler.cache.get(generated.spec.cache_key()) is None  # nobody else's
    view = await handler.jobs.get(generated.job_id)
    # completed only once the broker has the event; who made the image is known from here on
    assert (view.status, view.url, view.provider) == ("stored", done.url, "replicate")

    await outcome.on_acked()
    view = await handler.jobs.get(generated.job_id)
    assert (view.status, view.url, view.provider) == ("completed", done.url, "replicate")


async def test_a_completion_joins_the_recent_list_once_the_broker_has_it_and_a_failure_never_does():
    handler = _handler()
    handler.recent = MemoryRecentJobs()
    generated, broken = _generated(), _generated(image=b"not an image")

    outcome = await handler.handle(generated)
    assert await handler.recent.latest(10) == []
    await outcome.on_acked()
    failed = await handler.handle(broken)
    await failed.on_acked()

    assert await handler.recent.latest(10) == [generated.job_id]


async def test_a_replay_uploads_nothing_again_and_publishes_the_same_event_or_nothing():
    handler = _handler()
    generated = _generated()
    first = await handler.handle(generated)

    replay = await handler.handle(generated)

    assert handler.store.puts == 1  # the bytes were there already
    [again] = replay.outputs
    assert again.event.to_json_bytes() == first.outputs[0].event.to_json_bytes()
    await first.on_acked()
    assert list((await handler.handle(generated)).outputs) == []
    assert handler.store.puts == 1


async def test_a_replay_in_another_process_writes_the_same_object_again_and_publishes_the_same_event():
    first_process = _handler()
    generated = _generated()
    [first] = (await first_process.handle(generated)).outputs
    second_process = StoreHandler(store=first_process.store, cache=first_process.cache, topics=TOPICS,
                                  jobs=first_process.jobs, guard=first_process.guard, key_prefix="images/")

    [again] = (await second_process.handle(generated)).outputs

    assert first_process.store.puts == 2 and list(first_process.store.objects) == [KEY]  # no HEAD: one more PUT
    assert first_process.store.objects[KEY].data == FAKE_PNG
    assert again.event.to_json_bytes() == first.event.to_json_bytes()


async def test_the_same_bytes_for_another_job_share_one_object():
    handler = _handler()
    a, b = _generated(), _generated()

    [out_a] = (await handler.handle(a)).outputs
    [out_b] = (await handler.handle(b)).outputs

    assert out_a.event.url == out_b.event.url and handler.store.puts == 1
    assert out_a.event.job_id != out_b.event.job_id


async def test_a_placeholder_is_published_but_never_cached():
    handler = _handler()
    generated = _generated(placeholder=True)

    [output] = (await handler.handle(generated)).outputs

    assert output.event.placeholder is True
    assert await handler.cache.get(generated.spec.cache_key("studio")) is None


async def test_bytes_that_are_not_the_announced_type_fail_the_job_without_an_upload():
    handler = _handler()
    generated = _generated(image=b"GIF89a not a png")

    [output] = (await handler.handle(generated)).outputs

    assert output.topic == "t.generation.failed"
    error = output.event.error
    assert (error.code, error.stage, error.retryable, error.provider) == ("invalid_image", "storage", False,
                                                                         "replicate")
    assert "sent unrecognised bytes, not the image/png it announced" in error.message
    assert handler.store.objects == {}


async def test_an_object_store_failure_is_retryable():
    handler = _handler(_DownStore())

    with pytest.raises(Retryable, match="answered 503"):
        await handler.handle(_generated())
    assert await handler.cache.stats() == {}


async def test_a_reference_image_asks_for_the_comparison_first():
    handler = _handler()
    generated = _generated(reference_image="https://example.test/target.png")

    outcome = await handler.handle(generated)

    [output] = outcome.outputs
    assert output.topic == "t.comparison.requested"
    request = output.event
    assert isinstance(request, c.ComparisonRequested)
    assert (request.job_id, request.generation_job_id, request.original_prompt) == (
        comparison_id_for(generated.job_id), generated.job_id, "ice sword")
    assert request.target_image == c.HttpsImage(url="https://example.test/target.png")
    assert request.generated_image == c.StoredImage(object_key=KEY, sha256=DIGEST, content_type="image/png")
    assert request.completion is not None and request.completion.url == handler.store.public_url(KEY)

    await outcome.on_acked()
    comparison = await handler.jobs.get(request.job_id)
    assert (comparison.kind, comparison.status, comparison.generation_job_id) == (
        "comparison", "queued", generated.job_id)
    generation = await handler.jobs.get(generated.job_id)
    assert (generation.status, generation.comparison_id) == ("stored", request.job_id)
    # The comparer publishes the generation's terminal event, not storage: no claim was taken for it.
    other = c.GenerationFailed(job_id=generated.job_id, tenant="studio", error=c.ErrorInfo(
        code="x", message="a probe", stage="comparer", retryable=False))
    assert await handler.guard.claim(other) == other
