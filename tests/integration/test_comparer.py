"""The comparer's decisions against real Redis and S3 and a fake VLM over HTTP: failover, budget,
fallback, cache, image resolution, and what a generation waiting on its comparison gets."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image, ImageFilter

from services.common import contracts as c
from services.common.blobstore import S3BlobStore
from services.common.breaker import RedisCircuitBreaker
from services.common.budget import RedisBudgetLedger, usd
from services.common.cache import CacheScope
from services.common.fetch import SafeFetcher
from services.common.images import ImageInputError, validate_image_bytes
from services.common.jobs import RedisJobStore, RedisTerminalGuard
from services.common.keypool import ApiKey, RedisKeyPool
from services.common.redis import KeySpace
from services.common.topics import Topics
from services.comparer import perceptual
from services.comparer.handlers import CompareHandler
from services.comparer.perceptual import PerceptualComparer
from services.comparer.resolve import ImageResolver
from services.comparer.service import ComparisonCache, ComparisonService
from services.fakeproviders import openai_chat
from services.fakeproviders.base import FakeProvider, fingerprint
from services.fakeproviders.server import serve_fake
from services.providers.failover import Candidate, Failover
from services.providers.procedural import render_icon
from services.providers.vlm import VlmComparer, VlmConfig

pytestmark = pytest.mark.integration

PROMPT = "frost crystal longbow"
KEY_A = "sk-test-vlm-key-a-not-real-0001"
KEY_B = "sk-test-vlm-key-b-not-real-0002"


async def _no_sleep(_seconds: float) -> None:
    return None


def _png(raw: bytes, blur: float = 0) -> bytes:
    image = Image.open(io.BytesIO(raw)).convert("RGB")
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


TARGET = render_icon(c.ImageSpec(prompt=PROMPT, width=128, height=128, seed=3))
GENERATED = _png(TARGET, blur=1.5)


@dataclass
class Rig:
    fake: FakeProvider
    app: object
    keys: list[ApiKey]
    pool: RedisKeyPool
    ledger: RedisBudgetLedger
    service: ComparisonService
    space: KeySpace

    def calls_with(self, secret: str) -> int:
        return sum(r.key == fingerprint(secret) for r in self.fake.requests)


@pytest.fixture
async def rig(redis, connections) -> AsyncIterator:
    """``await rig(cap_usd=..., attempts=...)``: a fake VLM with two keys behind the real failover."""
    space = KeySpace(connections.redis.key_prefix)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient())

        async def make(*, cap_usd: str = "10", attempts: int = 3) -> Rig:
            fake = FakeProvider("vlm")
            app = openai_chat.create_app(fake, answer="prose")
            url = await stack.enter_async_context(serve_fake(app))
            keys = [ApiKey("vlm", KEY_A), ApiKey("vlm", KEY_B)]
            pool = RedisKeyPool(redis, space, "vlm", keys)
            ledger = RedisBudgetLedger(redis, space, cap_micros=usd(cap_usd))
            failover = Failover([Candidate(
                name="vlm", adapter=VlmComparer(VlmConfig(base_url=url, timeout_s=10), http),
                breaker=RedisCircuitBreaker(redis, space, "vlm"), keys=pool, cost_micros=usd("0.0005"))],
                budget=ledger, attempts=attempts, sleep=_no_sleep)
            service = ComparisonService(cache=ComparisonCache(redis, space, ttl_s=60),
                                        perceptual=PerceptualComparer(), vlm=failover)
            return Rig(fake, app, keys, pool, ledger, service, space)

        yield make


def _images() -> tuple:
    return validate_image_bytes(TARGET, field="target_image"), validate_image_bytes(GENERATED, field="generated_image")


async def test_the_vlm_judges_on_a_good_key_when_the_other_is_rate_limited(rig):
    r = await rig()
    r.fake.knobs.rejected_keys = {KEY_A: "429"}
    r.fake.knobs.retry_after_s = 60
    target, generated = _images()

    results = [(await r.service.score(c.new_job_id(), target, generated, f"{PROMPT} #{n}")).result for n in range(3)]

    assert all(result.method == "vlm" and result.fallback_reason is None for result in results)
    assert results[0].score == pytest.approx(perceptual.compare(TARGET, GENERATED, PROMPT).score, abs=0.01)
    assert {result.provider for result in results} == {r.keys[1].key_id}  # the fingerprint, never the secret
    assert r.calls_with(KEY_B) == 3
    assert r.calls_with(KEY_A) <= 1, "a cooled key is not tried again before its Retry-After"
    states = {s.key_id: s.state for s in await r.pool.states()}
    assert states[r.keys[0].key_id] == ("cooling_down" if r.calls_with(KEY_A) else "healthy")
    assert (await r.ledger.snapshot()).spent_micros == 3 * usd("0.0005")  # paid judgements only


async def test_every_key_rejected_falls_back_to_perceptual_and_says_why(rig):
    r = await rig()
    r.fake.knobs.rejected_keys = {KEY_A: "401", KEY_B: "401"}
    target, generated = _images()

    scored = await r.service.score(c.new_job_id(), target, generated, PROMPT)

    assert scored.result.method == "perceptual"
    assert scored.result.score == pytest.approx(perceptual.compare(TARGET, GENERATED, PROMPT).score, abs=0.01)
    assert "VLM unavailable" in scored.result.fallback_reason
    assert {s.state for s in await r.pool.states()} == {"disabled"}
    assert KEY_A not in scored.result.model_dump_json() and KEY_B not in scored.result.model_dump_json()
    assert (await r.ledger.snapshot()).spent_micros == 0, "failed calls are refunded"


async def test_a_spent_budget_keeps_the_vlm_unpaid_and_falls_back(rig):
    r = await rig(cap_usd="0")
    target, generated = _images()

    scored = await r.service.score(c.new_job_id(), target, generated, PROMPT)

    assert scored.result.method == "perceptual"
    assert "budget" in scored.result.fallback_reason
    assert r.fake.requests == [], "no paid call past the cap"


async def test_garbage_is_not_paid_for_twice_and_a_fallback_is_not_cached(rig):
    r = await rig()
    r.app.state.answer = "garbage"
    target, generated = _images()

    first = await r.service.score(c.new_job_id(), target, generated, PROMPT)
    assert first.result.method == "perceptual" and "unparseable_verdict" in first.result.fallback_reason
    assert len(r.fake.requests) == 1, "an unparseable answer fails the attempt at once"

    r.app.state.answer = "strict"
    second = await r.service.score(c.new_job_id(), target, generated, PROMPT)
    third = await r.service.score(c.new_job_id(), target, generated, "  frost   crystal longbow ")

    assert second.cached is False and second.result.method == "vlm", "the fallback was not cached"
    assert third.cached is True and third.result == second.result  # same hashes, normalised prompt
    assert len(r.fake.requests) == 2


async def test_a_cached_comparison_answers_only_its_own_tenant_unless_the_cache_is_shared(rig, redis):
    r = await rig()
    r.app.state.answer = "strict"
    target, generated = _images()

    alpha = await r.service.score(c.new_job_id(), target, generated, PROMPT, tenant="alpha")
    alpha_again = await r.service.score(c.new_job_id(), target, generated, PROMPT, tenant="alpha")
    beta = await r.service.score(c.new_job_id(), target, generated, PROMPT, tenant="beta")

    assert (alpha.cached, alpha_again.cached, beta.cached) == (False, True, False)
    assert len(r.fake.requests) == 2, "beta pays for its own judgement, and does not learn alpha compared these"

    shared = ComparisonService(cache=ComparisonCache(redis, r.space, ttl_s=60, scope=CacheScope(shared=True)),
                               perceptual=PerceptualComparer(), vlm=r.service.vlm)
    first = await shared.score(c.new_job_id(), target, generated, PROMPT, tenant="alpha")
    second = await shared.score(c.new_job_id(), target, generated, PROMPT, tenant="beta")
    assert (first.cached, second.cached) == (False, True) and second.result == first.result
    assert len(r.fake.requests) == 3


async def test_stored_and_job_images_resolve_only_for_their_owner(redis, connections, s3_key):
    space = KeySpace(connections.redis.key_prefix)
    blobs, jobs = S3BlobStore(connections.s3), RedisJobStore(redis, space)
    key = s3_key("generated.png")
    await blobs.put(key, GENERATED, content_type="image/png")
    digest = validate_image_bytes(GENERATED, field="x").sha256
    done, running = c.new_job_id(), c.new_job_id()
    await jobs.update(done, "completed", tenant="studio-a",
                      result={"object_key": key, "sha256": digest, "content_type": "image/png"})
    await jobs.update(running, "routed", tenant="studio-a")
    async with SafeFetcher() as fetcher:
        resolver = ImageResolver(fetcher=fetcher, blobs=blobs, jobs=jobs)

        mine = await resolver.resolve(c.JobImage(job_id=done), field="generated_image", tenant="studio-a")
        assert mine.data == GENERATED
        with pytest.raises(ImageInputError) as theirs:
            await resolver.resolve(c.JobImage(job_id=done), field="generated_image", tenant="studio-b")
        assert theirs.value.code == "job_not_found"
        with pytest.raises(ImageInputError) as unfinished:
            await resolver.resolve(c.JobImage(job_id=running), field="generated_image", tenant="studio-a")
        assert unfinished.value.code == "job_not_completed"
        with pytest.raises(ImageInputError) as tampered:
            await resolver.resolve(c.StoredImage(object_key=key, sha256="0" * 64, content_type="image/png"),
                                   field="target_image", tenant="studio-a")
        assert "SHA-256" in tampered.value.reason


async def test_an_unreadable_reference_still_delivers_the_generation_with_the_reason(redis, connections):
    space = KeySpace(connections.redis.key_prefix)
    jobs, topics = RedisJobStore(redis, space), Topics(connections.topics.prefix)
    completion = c.GenerationCompleted(
        job_id=c.new_job_id(), tenant="studio-a", url="http://cdn.example/x.png", object_key="images/x.png",
        sha256="a" * 64, content_type="image/png", size_bytes=10, spec=c.ImageSpec(prompt=PROMPT),
        provider="procedural", deterministic=True)
    request = c.ComparisonRequested(
        job_id=c.new_job_id(), tenant="studio-a", target_image=c.HttpsImage(url="https://10.0.0.8/ref.png"),
        generated_image=c.DataUrlImage(data_url="data:image/png;base64," + base64.b64encode(GENERATED).decode()),
        original_prompt=PROMPT, generation_job_id=completion.job_id, completion=completion)
    async with SafeFetcher() as fetcher:
        handler = CompareHandler(
            resolver=ImageResolver(fetcher=fetcher, blobs=S3BlobStore(connections.s3), jobs=jobs),
            service=ComparisonService(cache=ComparisonCache(redis, space, ttl_s=60), perceptual=PerceptualComparer()),
            topics=topics, jobs=jobs, guard=RedisTerminalGuard(redis, space))
        outcome = await handler.handle(request)
        await outcome.on_acked()
        replay = await handler.handle(request)

    by_topic = {output.topic: output.event for output in outcome.outputs}
    failed = by_topic[topics.name("comparison.failed")]
    delivered = by_topic[topics.name("generation.completed")]
    assert isinstance(failed, c.ComparisonFailed) and failed.error.code == "url_refused"
    assert "10.0.0.8 is a private address" in failed.error.message
    assert isinstance(delivered, c.GenerationCompleted) and delivered.job_id == completion.job_id
    assert delivered.comparison is None and delivered.comparison_error == failed.error
    assert (await jobs.get(completion.job_id)).status == "completed"
    assert (await jobs.get(request.job_id)).status == "failed"
    assert replay.outputs == [], "a replay publishes no second terminal event"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=os.environ | env, capture_output=True,
                          text=True, timeout=60, check=False)


async def test_an_operator_sees_and_re_enables_a_disabled_vlm_key(redis, connections):
    space = KeySpace(connections.redis.key_prefix)
    key = ApiKey("siliconflow-vlm", KEY_A)
    await RedisKeyPool(redis, space, "siliconflow-vlm", [key]).disable(key, reason="unauthorized: HTTP 401")
    env = {"FORGELINE_REDIS_URL": connections.redis.url.get_secret_value(),
           "FORGELINE_REDIS_KEY_PREFIX": connections.redis.key_prefix, "FORGELINE_COMPARER_VLM_KEYS": KEY_A,
           "COLUMNS": "200"}

    listed = await asyncio.to_thread(_cli, "keys", "list", env=env)
    enabled = await asyncio.to_thread(_cli, "keys", "enable", "siliconflow-vlm", key.key_id, env=env)
    after = {s.key_id: s.state for s in await RedisKeyPool(redis, space, "siliconflow-vlm", [key]).states()}

    assert listed.returncode == 0, listed.stderr
    assert key.key_id in listed.stdout and "disabled" in listed.stdout and "401" in listed.stdout
    assert KEY_A not in listed.stdout + listed.stderr, "only the masked key is shown"
    assert enabled.returncode == 0 and f"{key.key_id}: enabled" in enabled.stdout + enabled.stderr
    assert after == {key.key_id: "healthy"}
