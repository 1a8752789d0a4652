"""Coalescing and queue positions through the real pipeline: identical requests in flight share one
provider call (over HTTP and over Kafka at once, and with the leader's generator killed mid-call),
and jobs queued behind a slow primary show where they stand."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import defaultdict
from contextlib import asynccontextmanager

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from services.cli import app
from services.common import contracts as c
from services.common.kafka import make_consumer, make_producer, send_event
from services.fakeproviders import replicate
from services.fakeproviders.base import FakeProvider, Knobs
from services.fakeproviders.server import serve_fake

pytestmark = pytest.mark.e2e

BODY = {"prompt": "flaming obsidian greatsword", "width": 64, "height": 64, "seed": 7}


def _providers(tmp_path, url: str) -> dict[str, str]:
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump({
        "primary": [{"name": "replicate-fake", "type": "replicate", "keys_env": "E2E_KEYS_REPLICATE",
                     "cost_usd": 0.0023,
                     "options": {"model": "black-forest-labs/flux-schnell", "base_url": url, "poll_interval_s": 0.2,
                                 "prefer_wait_s": 1, "timeout_s": 600}}],
        "fallback": [{"name": "procedural", "type": "procedural"}],
    }))
    return {"FORGELINE_GENERATOR_PROVIDERS_FILE": str(path), "E2E_KEYS_REPLICATE": "r8_e2e-coalesce-key-00000000007",
            "FORGELINE_ROUTER_DEPTH_HIGH": "500", "FORGELINE_ROUTER_DEPTH_LOW": "400"}


@asynccontextmanager
async def _pipeline(running_pipeline, tmp_path, knobs: Knobs, env: dict[str, str] | None = None,
                    per_service_env: dict[str, dict[str, str]] | None = None):
    fake = FakeProvider("replicate-fake", knobs)
    async with serve_fake(replicate.create_app(fake)) as url:
        async with running_pipeline(env=_providers(tmp_path, url) | (env or {}), per_service_env=per_service_env) as p, \
                httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            yield fake, p, http


def _creates(fake: FakeProvider) -> list:
    """The provider calls that start a generation (what a paid provider bills)."""
    return [r for r in fake.requests if r.method == "POST" and r.path.endswith("/predictions")]


async def _terminal_events(p, job_ids: set[str], timeout_s: float = 60) -> dict[str, list]:
    """Every terminal record of ``job_ids`` (completed and failed), once each job has one, plus 1 s of quiet."""
    consumer = make_consumer(p.connections.kafka, p.topics.name("generation.completed"), group_id=None)
    consumer.subscribe([p.topics.name("generation.completed"), p.topics.name("generation.failed")])
    await consumer.start()
    found: dict[str, list] = defaultdict(list)
    deadline, quiet_since = time.monotonic() + timeout_s, None
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for record in (r for rs in batch.values() for r in rs):
                if record.key.decode() in job_ids:
                    found[record.key.decode()].append(record)
                    quiet_since = None
            if job_ids <= found.keys():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 1.0:
                    return found
    finally:
        await consumer.stop()
    raise AssertionError(f"{len(job_ids - found.keys())} of {len(job_ids)} jobs have no terminal event")


async def _view(http: httpx.AsyncClient, job_id: str) -> dict:
    return (await http.get(f"/v1/generations/{job_id}")).json()


async def _until(condition, what: str, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := await condition():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _same_image_for_all(events: dict[str, list], http: httpx.AsyncClient) -> set[str]:
    """Each job has exactly one terminal event, a completion; every URL serves the same bytes. Returns leaders."""
    leaders, digests = set(), set()
    for job_id, records in events.items():
        [record] = records
        assert record.topic.endswith("generation.completed"), record.value[:300]
        completed = c.decode(c.GenerationCompleted, record.value)
        assert completed.job_id == job_id and not completed.cached
        if completed.coalesced_with is None:
            leaders.add(job_id)
        body = (await http.get(completed.url)).content
        assert hashlib.sha256(body).hexdigest() == completed.sha256
        digests.add(completed.sha256)
    assert len(digests) == 1, digests
    return leaders


async def test_identical_requests_over_http_and_kafka_make_one_provider_call_each(running_pipeline, tmp_path):
    async with _pipeline(running_pipeline, tmp_path, Knobs(slow_start_polls=8)) as (fake, p, http):
        producer = make_producer(p.connections.kafka)
        await producer.start()
        try:
            native = [c.GenerationRequested(job_id=c.new_job_id(), tenant="kafka-native",
                                            spec=c.ImageSpec(prompt="frost crystal longbow", width=64, height=64))
                      for _ in range(10)]
            # Twenty over HTTP and ten produced straight to Kafka, all at once.
            answers, _ = await asyncio.gather(
                asyncio.gather(*(http.post("/v1/generations", json=BODY) for _ in range(20))),
                asyncio.gather(*(send_event(producer, p.topics.name("generation.requested"), r) for r in native)))
        finally:
            await producer.stop()
        assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
        over_http = {a.json()["job_id"] for a in answers}
        events = await _terminal_events(p, over_http | {r.job_id for r in native})
        leaders = await _same_image_for_all({job: events[job] for job in over_http}, http)
        native_leaders = await _same_image_for_all({r.job_id: events[r.job_id] for r in native}, http)
        follower = await _view(http, next(iter(over_http - leaders)))

    assert len(over_http) == 20
    assert len(_creates(fake)) == 2, fake.requests  # one per distinct request
    assert len(fake.charges) == 2
    [leader] = leaders
    assert len(native_leaders) == 1
    assert follower["status"] == "completed" and follower["coalesced_with"] == leader
    assert follower["result"]["coalesced_with"] == leader


async def test_the_lease_of_a_leader_whose_generator_was_killed_is_taken_over(running_pipeline, tmp_path):
    lease = {"FORGELINE_ROUTER_COALESCE_LEASE_S": "1.5", "FORGELINE_GENERATOR_COALESCE_LEASE_S": "1.5",
             "FORGELINE_ROUTER_COALESCE_SWEEP_S": "0.2"}
    # The first call hangs at the provider until the generator is killed; later ones take two polls.
    async with _pipeline(running_pipeline, tmp_path, Knobs(slow_start_polls=100_000), env=lease) as (fake, p, http):
        answers = await asyncio.gather(*(http.post("/v1/generations", json=BODY) for _ in range(20)))
        job_ids = [a.json()["job_id"] for a in answers]
        await _until(lambda: asyncio.sleep(0, len(_creates(fake)) == 1), "the leader's provider call")
        views = await asyncio.gather(*(_view(http, j) for j in job_ids))
        [old_leader] = [v["job_id"] for v in views if v["status"] == "generating"]

        p.pipeline.kill("generator-primary")  # kill -9 mid-call: nobody renews the lease any more
        fake.knobs.slow_start_polls = 2

        async def promoted() -> str | None:
            views = await asyncio.gather(*(_view(http, j) for j in job_ids if j != old_leader))
            return next((v["job_id"] for v in views if v.get("route") == "primary"), None)

        new_leader = await _until(promoted, "a follower to take the lease over")
        assert len(_creates(fake)) == 1  # nobody generates until a generator is back
        await asyncio.to_thread(p.pipeline.start, ["generator-primary"])
        events = await _terminal_events(p, set(job_ids))
        leaders = await _same_image_for_all(events, http)

    assert leaders == {new_leader}
    old = c.decode(c.GenerationCompleted, events[old_leader][0].value)
    assert old.coalesced_with == new_leader  # the old leader's redelivered job waited on the new one
    assert len(_creates(fake)) == 2, fake.requests  # the call lost with the killed generator, and the new leader's


async def test_jobs_queued_behind_a_slow_primary_show_their_position_and_start(running_pipeline, tmp_path):
    one_at_a_time = {"generator-primary": {"FORGELINE_GENERATOR_CONCURRENCY": "1"}}
    fast_rate = {"FORGELINE_ROUTER_RATE_WINDOW_S": "4", "FORGELINE_GENERATOR_COMMIT_INTERVAL_S": "0.1"}
    async with _pipeline(running_pipeline, tmp_path, Knobs(slow_start_polls=4), env=fast_rate,
                         per_service_env=one_at_a_time) as (fake, p, http):
        # A first few jobs, one after the other, so the router measures the primary's rate.
        for i in range(2):
            job = (await http.post("/v1/generations", json=BODY | {"prompt": f"warm-up {i}"})).json()["job_id"]
            await _until(lambda job=job: _done(http, job), f"warm-up job {i}")
        queued = []
        for i in range(6):  # one at a time, so the router numbers them in this order
            queued.append((await http.post("/v1/generations", json=BODY | {"prompt": f"queued {i}"})).json()["job_id"])
            await _until(lambda job=queued[-1]: _routed(http, job), f"queued job {i} routed")

        async def waiting() -> list[dict] | None:
            """The queued jobs at a moment when no generator took one while they were read."""
            first = [await _view(http, job) for job in queued]
            second = [await _view(http, job) for job in queued]
            if [(v["status"], v.get("queue_position")) for v in first] != \
                    [(v["status"], v.get("queue_position")) for v in second]:
                return None
            routed = [v for v in second if v["status"] == "routed"]
            return routed if len(routed) >= 3 and all(v["estimated_start_s"] for v in routed) else None

        routed = await _until(waiting, "three queued jobs with an estimated start")
        shown = await asyncio.to_thread(CliRunner().invoke, app, ["status", routed[-1]["job_id"], "--url", p.ingest_url],
                                        catch_exceptions=False)
        events = await _terminal_events(p, set(queued))
        ended = [await _view(http, job) for job in queued]

    positions = [v["queue_position"] for v in routed]
    assert positions == sorted(positions) and len(set(positions)) == len(positions), routed  # in routing order
    assert positions[-1] - positions[0] == len(positions) - 1  # no gaps: each routed job counted once
    starts = [v["estimated_start_s"] for v in routed]
    assert starts == sorted(starts) and starts[0] > 0, routed
    for view in routed:  # (position + 1) jobs to finish at one rate: the same rate behind each estimate
        assert view["estimated_start_s"] / (view["queue_position"] + 1) == pytest.approx(
            starts[0] / (positions[0] + 1), rel=0.2)
        assert view["estimated_start_at"] is not None and view["route"] == "primary"
    assert all(records[0].topic.endswith("generation.completed") for records in events.values())
    assert all(v["status"] == "completed" and v["queue_position"] is None for v in ended)  # only while waiting
    assert shown.exit_code == 0, shown.output
    assert " ahead on primary; starts in about " in shown.output, shown.output


async def _done(http: httpx.AsyncClient, job_id: str) -> bool:
    return (await _view(http, job_id))["status"] == "completed"


async def _routed(http: httpx.AsyncClient, job_id: str) -> bool:
    return (await _view(http, job_id))["status"] != "queued"
