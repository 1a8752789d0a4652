"""A game backend's view: HTTP in, image URL out, through the real broker, Redis and S3."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable

import httpx
import pytest

from services.common import contracts as c
from services.common.kafka import (
    H_DLQ_REASON,
    headers_of,
    make_consumer,
    make_producer,
    send_event,
)
from services.common.queue_position import RedisQueueBook
from services.common.redis import KeySpace, make_redis
from services.providers.procedural import render_icon
from tests.helpers import records_for

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "failed"}


async def _wait_terminal(http: httpx.AsyncClient, job_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = await http.get(f"/v1/generations/{job_id}")
        if response.status_code == 200 and response.json()["status"] in TERMINAL:
            return response.json()
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s: {response.text}")


async def test_post_to_completed_serves_the_generated_bytes_then_the_cache_answers(running_pipeline):
    body = {"prompt": "flaming obsidian greatsword", "width": 256, "height": 256, "seed": 1234}
    async with running_pipeline() as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            accepted = await http.post("/v1/generations", json=body)
            assert accepted.status_code == 202, accepted.text
            job = await _wait_terminal(http, accepted.json()["job_id"])
            again = await http.post("/v1/generations", json=body)
        async with httpx.AsyncClient(timeout=30) as browser:
            image = await browser.get(job["url"])

    assert job["status"] == "completed", job
    assert job["route"] == "primary" and job["provider"] == "procedural" and job["deterministic"] is True
    expected = render_icon(c.ImageSpec(prompt=body["prompt"], width=256, height=256, seed=1234))
    assert image.status_code == 200
    assert image.content == expected, "the bytes at the URL are not the image the provider makes"
    assert image.headers["content-type"] == "image/png"
    assert again.status_code == 200, again.text
    assert again.json()["cached"] is True and again.json()["url"] == job["url"]


async def test_garbage_goes_to_the_dlq_and_a_valid_request_after_it_completes(running_pipeline):
    async with running_pipeline() as p:
        requested = p.topics.name("generation.requested")
        producer = make_producer(p.connections.kafka)
        await producer.start()
        try:
            await producer.send_and_wait(requested, b"{\"prompt\": 42", key=b"garbage-job-1", partition=0)
            valid = c.GenerationRequested(job_id=c.new_job_id(), tenant="direct-kafka",
                                          spec=c.ImageSpec(prompt="frost crystal longbow", width=128, height=128))
            await producer.send_and_wait(requested, valid.to_json_bytes(), key=valid.job_id.encode(), partition=0)
        finally:
            await producer.stop()
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            job = await _wait_terminal(http, valid.job_id)
        letters = await records_for(p.connections, p.topics.dlq("generation.requested"), "garbage-job-1")

    assert job["status"] == "completed", job
    assert len(letters) == 1
    assert "invalid GenerationRequested" in headers_of(letters[0])[H_DLQ_REASON]
    assert letters[0].value == b"{\"prompt\": 42"


async def _router_sees_primary_depth(p, wanted: Callable[[int], bool], timeout_s: float = 30.0) -> None:
    """Wait until the depth the router routes by (it reports it to Redis each second) is ``wanted``."""
    async with make_redis(p.connections.redis) as redis:
        book, depth = RedisQueueBook(redis, KeySpace(p.connections.redis.key_prefix)), None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            depth = await book.measured_depth("primary")
            if depth is not None and wanted(depth):
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"the router's primary depth stayed at {depth} for {timeout_s:.0f} s\n{p.log('router')}")


async def test_router_sends_overflow_to_fallback_and_returns_when_primary_drains(running_pipeline):
    env = {"FORGELINE_ROUTER_DEPTH_HIGH": "5", "FORGELINE_ROUTER_DEPTH_LOW": "2"}
    without_primary = ["router", "generator-fallback", "storage", "ingest"]
    async with running_pipeline(services=without_primary, env=env) as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:

            async def submit(i: int) -> str:
                response = await http.post("/v1/generations", json={"prompt": f"backlog shield {i}", "width": 64,
                                                                    "height": 64})
                assert response.status_code == 202, response.text
                return response.json()["job_id"]

            async def route_of(job_id: str) -> str:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    view = (await http.get(f"/v1/generations/{job_id}")).json()
                    if view.get("route"):
                        return view["route"]
                    await asyncio.sleep(0.05)
                raise AssertionError(f"job {job_id} was never routed")

            backlog = [await submit(i) for i in range(5)]  # nobody consumes primary: real lag builds up
            backlog_routes = [await route_of(j) for j in backlog]
            await _router_sees_primary_depth(p, lambda depth: depth >= 5)  # the lag of 5, not a fixed sleep
            overflow = [await submit(100 + i) for i in range(3)]
            overflow_routes = [await route_of(j) for j in overflow]
            overflow_jobs = [await _wait_terminal(http, j) for j in overflow]

            # The primary path comes back and drains the backlog.
            await asyncio.to_thread(p.pipeline.start, ["generator-primary"])
            drained = [await _wait_terminal(http, j) for j in backlog]
            await _router_sees_primary_depth(p, lambda depth: depth <= 2)
            after = await submit(200)
            after_route = await route_of(after)

    assert backlog_routes == ["primary"] * 5
    assert overflow_routes == ["fallback"] * 3
    assert all(j["status"] == "completed" for j in overflow_jobs + drained)
    assert after_route == "primary"


async def test_a_generator_killed_before_its_commit_still_gives_one_terminal_result(running_pipeline):
    # The primary generator never commits on its own (an hour between commits), so killing it
    # after it produced replays its input: the job is generated twice, but completes once.
    slow_commits = {"generator-primary": {"FORGELINE_GENERATOR_COMMIT_INTERVAL_S": "3600"}}
    async with running_pipeline(per_service_env=slow_commits) as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            accepted = await http.post("/v1/generations", json={"prompt": "healing potion", "width": 64, "height": 64})
            job_id = accepted.json()["job_id"]
            first = await _wait_terminal(http, job_id)

            await asyncio.to_thread(p.pipeline.kill, "generator-primary")
            await asyncio.to_thread(p.pipeline.start, ["generator-primary"])
            generated = []
            deadline = time.monotonic() + 60
            while len(generated) < 2 and time.monotonic() < deadline:
                generated = await records_for(p.connections, p.topics.name("generation.generated"), job_id, 1.0)
            completed = await records_for(p.connections, p.topics.name("generation.completed"), job_id)
            final = (await http.get(f"/v1/generations/{job_id}")).json()

    assert first["status"] == "completed"
    assert len(generated) == 2, "the restarted generator should have replayed the uncommitted job"
    assert len(completed) == 1, f"{len(completed)} completed events for one job"
    assert final["status"] == "completed" and final["url"] == first["url"]


async def test_api_errors_through_the_running_service(running_pipeline):
    async with running_pipeline(services=["ingest"], env={"FORGELINE_INGEST_MAX_BODY_BYTES": "65536"}) as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            unknown = await http.get(f"/v1/generations/{c.new_job_id()}")
            invalid = await http.post("/v1/generations", json={"prompt": "", "width": 100, "colour": "red"})
            too_big = await http.post("/v1/generations", content=b"x" * 100_000,
                                      headers={"content-type": "application/json"})

    assert unknown.status_code == 404
    assert invalid.status_code == 422
    bad_fields = {tuple(error["loc"])[-1] for error in invalid.json()["detail"]}
    assert {"prompt", "width", "colour"} <= bad_fields
    assert too_big.status_code == 413


async def test_a_request_produced_straight_to_kafka_completes(running_pipeline):
    """Game backends may skip HTTP: produce GenerationRequested, consume GenerationCompleted."""
    async with running_pipeline() as p:
        request = c.GenerationRequested(job_id=c.new_job_id(), tenant="kafka-native",
                                        spec=c.ImageSpec(prompt="golden ring", width=64, height=64, seed=9),
                                        metadata={"slot": "finger"})
        reader = make_consumer(p.connections.kafka, p.topics.name("generation.completed"), group_id=None)
        await reader.start()
        producer = make_producer(p.connections.kafka)
        await producer.start()
        try:
            await send_event(producer, p.topics.name("generation.requested"), request)
            record = None
            while record is None or record.key != request.job_id.encode():
                record = await asyncio.wait_for(reader.getone(), 60)
            # The same image asked for again, straight on Kafka: the router answers from the cache.
            repeat = request.model_copy(update={"job_id": c.new_job_id()})
            await send_event(producer, p.topics.name("generation.requested"), repeat)
            repeated = None
            while repeated is None or repeated.key != repeat.job_id.encode():
                repeated = await asyncio.wait_for(reader.getone(), 60)
        finally:
            await producer.stop()
            await reader.stop()

    completed = c.decode(c.GenerationCompleted, record.value)
    assert completed.metadata == {"slot": "finger"}
    assert completed.sha256 == hashlib.sha256(render_icon(request.spec)).hexdigest()
    assert headers_of(record)["forgeline-tenant"] == "kafka-native"
    answered = c.decode(c.GenerationCompleted, repeated.value)
    assert (answered.cached, answered.url, answered.path) == (True, completed.url, None)
