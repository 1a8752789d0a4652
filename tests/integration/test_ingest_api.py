"""The ingest API against the real Kafka and Redis: what a game backend sees over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from services.common.contracts import (
    GenerationCompleted,
    GenerationRequested,
    ImageSpec,
    decode,
)
from services.common.kafka import make_producer
from services.common.settings import Connections
from services.devstack.process import free_ports
from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from tests.integration.ingest_support import Api, api, consume, locs, requested_count, served

pytestmark = pytest.mark.integration

API_KEY = "sk-forgeline-test-4f1c9a7e2b"
OTHER_KEY = "sk-forgeline-test-other-77d0"


# ----------------------------------------------------------------------------------- submit


async def test_accepted_job_is_on_the_requested_topic(client: Api, connections: Connections):
    response = await client.http.post("/v1/generations", json={
        "prompt": "flaming obsidian greatsword", "width": 256, "height": 512, "seed": 7,
        "metadata": {"item": "sword-17"}})

    assert response.status_code == 202, response.text
    body = response.json()
    job_id = body["job_id"]
    assert body["status"] == "queued"
    assert body["status_url"] == f"/v1/generations/{job_id}"
    assert body["events_url"] == f"/v1/generations/{job_id}/events"
    assert response.headers["x-request-id"]

    [record] = await consume(connections, client.deps.topics.name("generation.requested"), 1)
    event = decode(GenerationRequested, record.value)
    assert record.key == job_id.encode()
    assert (event.job_id, event.tenant, event.spec.prompt) == (job_id, "public", "flaming obsidian greatsword")
    assert (event.spec.width, event.spec.height, event.spec.seed, event.metadata) == (256, 512, 7, {"item": "sword-17"})
    assert event.timings.accepted_at is not None

    status = await client.http.get(body["status_url"])
    assert status.status_code == 200
    assert status.json()["status"] == "queued"
    assert status.json()["timings"]["accepted_at"]


async def test_tenant_header_is_used_without_api_keys(client: Api, connections: Connections):
    response = await client.http.post("/v1/generations", json={"prompt": "shield"},
                                      headers={"X-Forgeline-Tenant": "studio-beta"})
    assert response.status_code == 202
    [record] = await consume(connections, client.deps.topics.name("generation.requested"), 1)
    assert decode(GenerationRequested, record.value).tenant == "studio-beta"

    bad = await client.http.post("/v1/generations", json={"prompt": "shield"}, headers={"X-Forgeline-Tenant": "Not OK"})
    assert bad.status_code == 422
    assert ["header", "X-Forgeline-Tenant"] in locs(bad)


async def test_invalid_fields_are_each_named(client: Api):
    response = await client.http.post("/v1/generations", json={"prompt": "", "width": 100, "colour": "red"})

    assert response.status_code == 422
    assert {("body", "prompt"), ("body", "width"), ("body", "colour")} <= {tuple(loc) for loc in locs(response)}
    assert await requested_count(client.deps) == 0


async def test_contract_checks_beyond_field_types_are_422_too(client: Api):
    response = await client.http.post("/v1/generations", json={"prompt": "axe", "reference_image": "ftp://x/y.png"})

    assert response.status_code == 422
    assert locs(response) == [["body", "reference_image"]]
    assert "https://" in response.json()["detail"][0]["msg"]


async def test_malformed_json_is_422(client: Api):
    response = await client.http.post("/v1/generations", content=b'{"prompt": "axe",',
                                      headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_oversized_body_is_413_by_length_and_while_streaming(connections: Connections, topics):
    settings = IngestSettings(max_body_bytes=4096)
    big = json.dumps({"prompt": "axe", "metadata": {f"k{i}": "v" * 400 for i in range(20)}}).encode()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(big), 1000):
            yield big[start:start + 1000]

    async with api(connections, settings) as client:
        declared = await client.http.post("/v1/generations", content=big, headers={"content-type": "application/json"})
        streamed = await client.http.post("/v1/generations", content=chunks(),
                                          headers={"content-type": "application/json"})
        small = await client.http.post("/v1/generations", json={"prompt": "axe"})

        for response in (declared, streamed):
            assert response.status_code == 413, response.text
            assert "4096 bytes" in response.json()["detail"]
        assert small.status_code == 202
        assert await requested_count(client.deps) == 1


# ----------------------------------------------------------------------------------- read


async def test_unknown_job_and_its_events_are_404(client: Api):
    for path in ("/v1/generations/0123456789abcdef", "/v1/generations/0123456789abcdef/events"):
        response = await client.http.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": "no job 0123456789abcdef"}
    assert (await client.http.get("/v1/generations/..%2F..")).status_code == 404


# ----------------------------------------------------------------------------------- idempotency


async def test_same_idempotency_key_gives_the_same_job_and_one_message(client: Api):
    body = {"prompt": "ancient rune stone", "seed": 3}
    first = await client.http.post("/v1/generations", json=body, headers={"Idempotency-Key": "order-42"})
    again = await client.http.post("/v1/generations", json=body, headers={"Idempotency-Key": "order-42"})

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["job_id"] == first.json()["job_id"]
    assert (first.json()["idempotent_replay"], again.json()["idempotent_replay"]) == (False, True)
    assert await requested_count(client.deps) == 1

    other_tenant = await client.http.post("/v1/generations", json=body, headers={
        "Idempotency-Key": "order-42", "X-Forgeline-Tenant": "studio-beta"})
    assert other_tenant.json()["job_id"] != first.json()["job_id"]  # keys are per tenant

    key = client.deps.keys.key("idem", "public", hashlib.sha256(b"order-42").hexdigest())
    assert 0 < await client.deps.redis.ttl(key) <= client.deps.settings.status_ttl_s


async def test_concurrent_requests_with_one_idempotency_key_make_one_job(client: Api):
    responses = await asyncio.gather(*(
        client.http.post("/v1/generations", json={"prompt": "twin daggers"}, headers={"Idempotency-Key": "burst-1"})
        for _ in range(8)))

    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["job_id"] for r in responses}) == 1
    assert await requested_count(client.deps) == 1


async def test_reused_idempotency_key_with_another_body_is_422(client: Api):
    headers = {"Idempotency-Key": "order-43"}
    first = await client.http.post("/v1/generations", json={"prompt": "red potion"}, headers=headers)
    other = await client.http.post("/v1/generations", json={"prompt": "blue potion"}, headers=headers)

    assert first.status_code == 202
    assert other.status_code == 422
    assert other.json()["detail"][0]["type"] == "idempotency_key_reused"
    assert await requested_count(client.deps) == 1


async def test_replay_of_a_finished_job_is_200_with_its_result(client: Api):
    headers = {"Idempotency-Key": "order-44"}
    job_id = (await client.http.post("/v1/generations", json={"prompt": "gem"}, headers=headers)).json()["job_id"]
    await client.deps.jobs.update(job_id, "completed", url="https://cdn.example.com/gem.png", provider="procedural",
                                  result={"sha256": "a" * 64, "content_type": "image/png"})

    again = await client.http.post("/v1/generations", json={"prompt": "gem"}, headers=headers)

    assert again.status_code == 200
    assert again.json().items() >= {"job_id": job_id, "status": "completed", "url": "https://cdn.example.com/gem.png",
                                    "sha256": "a" * 64, "idempotent_replay": True}.items()


async def test_publish_failure_without_a_key_is_503_and_marks_the_job_failed(connections: Connections, topics):
    async with api(connections, IngestSettings(publish_timeout_s=1.0)) as client:
        await client.deps.producer.stop()  # a producer that can no longer reach Kafka
        response = await client.http.post("/v1/generations", json={"prompt": "lost"})

        assert response.status_code == 503
        assert "retry" in response.json()["detail"]
        [job_id] = [k.decode().rsplit(":", 1)[1].strip("{}") async for k in client.deps.redis.scan_iter(
            match=client.deps.keys.key("job", "*")) if not k.endswith(b":events")]
        view = await client.deps.jobs.get(job_id)
        assert view is not None and view.status == "failed" and view.error["code"] == "ingest_unavailable"


async def test_a_retry_of_a_job_whose_first_request_died_mid_publish_resends_it(connections: Connections, topics):
    """ingest was killed between queueing a job and Kafka's acknowledgement: its claim is still
    pending. The client's retry waits out the publish timeout, then re-sends the same job."""
    async with api(connections, IngestSettings(publish_timeout_s=1.0)) as client:
        broken = make_producer(connections.kafka)
        await broken.start()
        await broken.stop()
        cut_off = create_app(dataclasses.replace(client.deps, producer=broken))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cut_off), base_url="http://test") as http:
            first = await http.post("/v1/generations", json={"prompt": "order 47"},
                                    headers={"Idempotency-Key": "order-47"})
        assert first.status_code == 503
        key = client.deps.keys.key("idem", "public", hashlib.sha256(b"order-47").hexdigest())
        claim = json.loads(await client.deps.redis.get(key))
        # As a killed process leaves it: sent, never confirmed nor refused.
        await client.deps.redis.set(key, json.dumps(claim | {"state": "pending"}), xx=True)

        retry = await client.http.post("/v1/generations", json={"prompt": "order 47"},
                                       headers={"Idempotency-Key": "order-47"})
        again = await client.http.post("/v1/generations", json={"prompt": "order 47"},
                                       headers={"Idempotency-Key": "order-47"})

        assert retry.status_code == 202 and retry.json()["job_id"] == claim["job_id"]
        assert again.json()["job_id"] == claim["job_id"] and again.json()["idempotent_replay"] is True
        assert await requested_count(client.deps) == 1


async def test_a_retry_after_an_unacknowledged_publish_resends_the_same_job(connections: Connections, topics):
    """Kafka did not acknowledge in time (it may have taken the record): the 503 keeps the
    Idempotency-Key, and the retry with it re-sends the same job instead of making a second one."""
    async with api(connections, IngestSettings(publish_timeout_s=1.0)) as client:
        broken = make_producer(connections.kafka)
        await broken.start()
        await broken.stop()  # a producer that can no longer reach Kafka
        cut_off = create_app(dataclasses.replace(client.deps, producer=broken))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=cut_off), base_url="http://test") as http:
            first = await http.post("/v1/generations", json={"prompt": "order 46"},
                                    headers={"Idempotency-Key": "order-46"})
        assert first.status_code == 503
        assert "same Idempotency-Key" in first.json()["detail"]
        [job_id] = [k.decode().rsplit(":", 1)[1].strip("{}") async for k in client.deps.redis.scan_iter(
            match=client.deps.keys.key("job", "*")) if not k.endswith(b":events")]
        assert (await client.deps.jobs.get(job_id)).status == "queued"

        retry = await client.http.post("/v1/generations", json={"prompt": "order 46"},
                                       headers={"Idempotency-Key": "order-46"})
        again = await client.http.post("/v1/generations", json={"prompt": "order 46"},
                                       headers={"Idempotency-Key": "order-46"})

        assert retry.status_code == 202 and retry.json()["job_id"] == job_id
        assert again.json()["job_id"] == job_id and again.json()["idempotent_replay"] is True
        [record] = await consume(connections, client.deps.topics.name("generation.requested"), 1)
        assert json.loads(record.value)["job_id"] == job_id
        assert await requested_count(client.deps) == 1


# ----------------------------------------------------------------------------------- cache


async def test_cache_hit_is_200_at_once_with_the_url_and_no_message(client: Api):
    spec = ImageSpec(prompt="golden   chalice", width=256, height=256, seed=1)
    await client.deps.cache.put(spec.cache_key("public"), GenerationCompleted(  # the unkeyed callers' tenant
        job_id="earlierjob0001", tenant="public", url="https://cdn.example.com/images/chalice.png",
        object_key="images/chalice.png", sha256="b" * 64, content_type="image/png", size_bytes=1234, spec=spec,
        path="primary", provider="procedural", deterministic=True))

    # Whitespace differs: the normalised spec is the same.
    response = await client.http.post("/v1/generations", json={
        "prompt": "golden chalice", "width": 256, "height": 256, "seed": 1, "metadata": {"slot": "3"}})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body.items() >= {"status": "completed", "cached": True, "url": "https://cdn.example.com/images/chalice.png",
                            "sha256": "b" * 64, "provider": "procedural", "metadata": {"slot": "3"}}.items()
    assert body["job_id"] != "earlierjob0001"
    assert await requested_count(client.deps) == 0

    view = (await client.http.get(body["status_url"])).json()
    assert view["status"] == "completed" and view["cached"] is True
    assert view["url"] == "https://cdn.example.com/images/chalice.png"


# ----------------------------------------------------------------------------------- events


async def read_events(response: httpx.Response) -> AsyncIterator[tuple[str, str, dict | None]]:
    """(kind, id, data) per SSE frame; kind 'comment' for ': ...' lines."""
    frame: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip(), None
        elif line == "":
            if frame:
                yield frame.get("event", "message"), frame.get("id", ""), json.loads(frame.get("data", "null"))
                frame = {}
        else:
            name, _, value = line.partition(":")
            frame[name] = value.removeprefix(" ")


async def test_events_replay_then_stream_every_change_and_end(connections: Connections, topics):
    [port] = free_ports(1)
    settings = IngestSettings(port=port, sse_keepalive_s=0.3)
    async with (served(connections, settings) as base, api(connections, settings) as side,
                httpx.AsyncClient(base_url=base, timeout=30) as http):
        job_id = (await http.post("/v1/generations", json={"prompt": "crystal staff"})).json()["job_id"]
        await side.deps.jobs.update(job_id, "routed", route="primary", route_reason="primary depth 0 < 50")

        async def drive() -> None:
            await asyncio.sleep(0.8)  # long enough for a keepalive while nothing happens
            for status in ("generating", "stored"):
                await side.deps.jobs.update(job_id, status)
                await asyncio.sleep(0.1)
            await side.deps.jobs.update(job_id, "completed", url="https://cdn.example.com/staff.png")

        driver = asyncio.create_task(drive())
        frames = []
        async with http.stream("GET", f"/v1/generations/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for frame in read_events(response):
                frames.append(frame)
        await driver  # the stream ended on its own after "completed"

        statuses = [data["status"] for kind, _id, data in frames if kind == "status"]
        assert statuses == ["queued", "routed", "generating", "stored", "completed"]
        assert ("comment", "keepalive", None) in frames
        completed = frames[-1]
        assert completed[2]["url"] == "https://cdn.example.com/staff.png" and completed[2]["job_id"] == job_id

        # Resume after "routed": only what came later; after the end: nothing, and the stream closes.
        ids = [event_id for kind, event_id, _data in frames if kind == "status"]
        async with http.stream("GET", f"/v1/generations/{job_id}/events",
                               headers={"Last-Event-ID": ids[1]}) as response:
            resumed = [data["status"] async for kind, _i, data in read_events(response) if kind == "status"]
        assert resumed == ["generating", "stored", "completed"]
        async with http.stream("GET", f"/v1/generations/{job_id}/events",
                               headers={"Last-Event-ID": ids[-1]}) as response:
            assert [f async for f in read_events(response) if f[0] == "status"] == []


async def test_events_of_a_finished_job_replay_over_asgi_transport(client: Api):
    job_id = (await client.http.post("/v1/generations", json={"prompt": "bow"})).json()["job_id"]
    await client.deps.jobs.update(job_id, "failed", error={"code": "provider_rejected", "message": "no"})

    response = await client.http.get(f"/v1/generations/{job_id}/events")

    assert response.status_code == 200
    statuses = [data["status"] async for kind, _i, data in read_events(response) if kind == "status"]
    assert statuses == ["queued", "failed"]


# ----------------------------------------------------------------------------------- operations


async def test_health_readiness_metrics_and_docs(client: Api):
    assert (await client.http.get("/healthz")).json() == {"status": "ok"}
    assert (await client.http.get("/docs")).status_code == 200
    ready = await client.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"kafka": "ok", "redis": "ok"}}

    await client.http.post("/v1/generations", json={"prompt": "helm"})
    metrics = await client.http.get("/metrics")
    assert metrics.status_code == 200
    assert "forgeline_ingest_requests_total" in metrics.text
    assert 'route="/v1/generations"' in metrics.text
    assert "forgeline_ingest_jobs_total" in metrics.text
    assert "forgeline_cache_lookups_total" in metrics.text


async def test_readiness_names_the_dependency_that_is_down(connections: Connections, topics):
    [closed_port] = free_ports(1)
    no_redis = Connections(kafka=connections.kafka, topics=connections.topics, s3=connections.s3,
                           redis=connections.redis.model_copy(update={
                               "url": SecretStr(f"redis://127.0.0.1:{closed_port}/0"), "socket_timeout_s": 1.0}))
    async with api(no_redis) as client:
        ready = await client.http.get("/readyz")
        submit = await client.http.post("/v1/generations", json={"prompt": "helm"})

    assert ready.status_code == 503
    assert ready.json()["checks"]["kafka"] == "ok"
    assert ready.json()["checks"]["redis"] != "ok"
    assert submit.status_code == 503
    assert "Redis" in submit.json()["detail"]


async def test_pipeline_status_reports_depth_routes_and_cache(client: Api, producer):
    deps = client.deps
    await producer.send_and_wait(deps.topics.name("generation.primary"), b"{}", key=b"job-a")
    await producer.send_and_wait(deps.topics.name("generation.primary"), b"{}", key=b"job-b")
    await deps.redis.hset(deps.keys.key("stats", "routes"), mapping={"primary": 3, "fallback": 1})
    await deps.cache.get("0" * 64)  # one miss

    # On a broker that just started, the group coordinator may not be elected yet: /v1/status says
    # so with a 503 ("retry shortly"), as a client would see it; retry as the message says.
    for _ in range(40):
        response = await client.http.get("/v1/status")
        if response.status_code != 503:
            break
        await asyncio.sleep(0.5)

    assert response.status_code == 200, response.text
    status = response.json()
    assert status["queues"]["primary"]["depth"] == 2
    assert status["queues"]["fallback"]["depth"] == 0
    assert status["queues"]["primary"]["group_id"] == deps.groups.generator("primary")
    assert status["routes"] == {"primary": 3, "fallback": 1, "fallback_share": 0.25}
    assert status["cache"]["miss"] == 1 and status["cache"]["hit_rate"] == 0.0


# ----------------------------------------------------------------------------------- auth


async def test_api_keys_decide_the_tenant_and_never_leak(connections: Connections, topics):
    settings = IngestSettings(api_keys={"studio-alpha": SecretStr(API_KEY), "studio-beta": SecretStr(OTHER_KEY)})
    bodies: list[str] = []
    async with api(connections, settings) as client:
        async def call(method: str, path: str, **kwargs) -> httpx.Response:
            response = await client.http.request(method, path, **kwargs)
            bodies.append(response.text)
            return response

        anonymous = await call("POST", "/v1/generations", json={"prompt": "axe"})
        wrong = await call("POST", "/v1/generations", json={"prompt": "axe"},
                           headers={"Authorization": f"Bearer {API_KEY}x"})
        bearer = await call("POST", "/v1/generations", json={"prompt": "axe"},
                            headers={"Authorization": f"Bearer {API_KEY}"})
        header = await call("POST", "/v1/generations", json={"prompt": "bow"}, headers={"X-API-Key": API_KEY})
        job_url = bearer.json()["status_url"]
        own = await call("GET", job_url, headers={"X-API-Key": API_KEY})
        others = await call("GET", job_url, headers={"X-API-Key": OTHER_KEY})
        others_events = await call("GET", bearer.json()["events_url"], headers={"X-API-Key": OTHER_KEY})
        unauthenticated_status = await call("GET", "/v1/status")
        await call("GET", "/openapi.json")
        await call("GET", "/metrics")

        assert (anonymous.status_code, wrong.status_code) == (401, 401)
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert (bearer.status_code, header.status_code) == (202, 202)
        assert own.status_code == 200 and own.json()["tenant"] == "studio-alpha"
        assert (others.status_code, others_events.status_code) == (404, 404)
        assert unauthenticated_status.status_code == 401
        records = await consume(connections, client.deps.topics.name("generation.requested"), 2)
        assert {decode(GenerationRequested, r.value).tenant for r in records} == {"studio-alpha"}

    for text in (*bodies, repr(settings), str(settings), settings.model_dump_json()):
        assert API_KEY not in text and OTHER_KEY not in text
