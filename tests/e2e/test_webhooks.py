"""Webhooks on the real pipeline: a loopback receiver verifies every delivery with the standardwebhooks library.

The webhooks service runs with a short retry schedule (0.3 s between attempts) and the tests-only
loopback allowance; everything else is as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from standardwebhooks import Webhook
from starlette.requests import Request

from services.devstack.process import free_ports

pytestmark = pytest.mark.e2e

SERVICES = ["router", "generator-primary", "storage", "webhooks", "ingest"]
ENV = {
    "FORGELINE_INGEST_ALLOW_LOOPBACK_URLS": "true",
    "FORGELINE_WEBHOOKS_ALLOW_LOOPBACK_FOR_TESTS": "true",
    "FORGELINE_WEBHOOKS_SCHEDULE_S": "[0, 0.3, 0.3, 0.3, 0.3]",
    "FORGELINE_WEBHOOKS_JITTER": "0",
    "FORGELINE_WEBHOOKS_POLL_S": "0.2",
}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    verified: object | None  # the payload standardwebhooks returned, None when it refused the signature


@dataclass
class Receiver:
    """Answers each path with a script of statuses (the last one repeats) and verifies every request."""

    port: int
    scripts: dict[str, list[int]] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = await Request(scope, receive).body()
        path = scope["path"]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        verified = None
        with contextlib.suppress(Exception):
            verified = Webhook(self.secrets[path]).verify(body, headers)
        script = self.scripts.get(path, [200])
        status = script[min(len(self.at(path)), len(script) - 1)]
        self.received.append(Received(path, headers, body, status, verified))
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    (port,) = free_ports(1)
    receiver = Receiver(port)
    server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task


async def _until(what: str, check: Callable[[], object], timeout_s: float = 60) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := await check() if asyncio.iscoroutinefunction(check) else check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s} s: {what}")


async def _completed(http: httpx.AsyncClient, job_id: str) -> dict:
    async def done():
        job = (await http.get(f"/v1/generations/{job_id}")).json()
        return job if job["status"] in ("completed", "failed") else None
    return await _until(f"job {job_id} ends", done)


async def test_a_receiver_failing_three_times_gets_the_event_once_it_succeeds_with_the_same_webhook_id(
        running_pipeline) -> None:
    tenant = {"X-Forgeline-Tenant": "hooked"}
    async with receiving() as receiver, running_pipeline(services=SERVICES, env=ENV) as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30, headers=tenant) as http:
            # Refused at the door: private, metadata, and (before the tenant has a secret) unsigned.
            private = await http.post("/v1/generations", json={"prompt": "a", "webhook_url": "https://10.0.0.5/hook"})
            metadata = await http.post("/v1/generations", json={"prompt": "a",
                                                               "webhook_url": "http://169.254.169.254/latest"})
            unsigned = await http.post("/v1/generations", json={"prompt": "a", "webhook_url": receiver.url("/flaky")})
            secret = (await http.post("/v1/webhooks/secret")).json()["secret"]
            receiver.secrets["/flaky"] = secret
            receiver.scripts["/flaky"] = [500, 503, 500, 200]

            accepted = await http.post("/v1/generations", json={
                "prompt": "frost crystal longbow", "width": 128, "height": 128,
                "webhook_url": receiver.url("/flaky"), "webhook_events": ["completed", "failed"]})
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            job = await _completed(http, job_id)

            async def delivered():
                (delivery,) = (await http.get(f"/v1/generations/{job_id}")).json()["deliveries"]
                return delivery if delivery["state"] == "delivered" else None
            delivery = await _until("the delivery succeeds", delivered)
            replayed = await http.post(f"/v1/generations/{job_id}/deliveries/job/replay")
            await _until("the replay arrives", lambda: len(receiver.at("/flaky")) == 5)
            after_replay = (await http.get(f"/v1/generations/{job_id}/deliveries")).json()

    for refused in (private, metadata, unsigned):
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "webhook_url"]
    assert "private" in private.text and "metadata" in metadata.text and "signing secret" in unsigned.text

    attempts = receiver.at("/flaky")
    assert [r.status for r in attempts] == [500, 503, 500, 200, 200]
    assert len({r.headers["webhook-id"] for r in attempts}) == 1, "every attempt and the replay share the webhook-id"
    assert all(r.verified is not None for r in attempts), "every delivery verifies with the tenant's secret"
    assert len({r.body for r in attempts}) == 1, "every attempt sends the same bytes"
    payload = attempts[0].verified
    assert payload["type"] == "generation.completed"
    assert payload["data"]["job_id"] == job_id and payload["data"]["url"] == job["url"]

    assert job["status"] == "completed"
    assert [a["status"] for a in delivery["attempts"]] == [500, 503, 500, 200]
    assert all(a["latency_ms"] >= 0 and a["at"] for a in delivery["attempts"])
    assert delivery["webhook_id"] == attempts[0].headers["webhook-id"]
    assert replayed.status_code == 202 and replayed.json()["state"] == "pending"
    (final,) = after_replay
    assert final["state"] == "delivered" and [a["status"] for a in final["attempts"]][-1] == 200
    assert len(final["attempts"]) == 5


async def test_a_410_disables_the_endpoint_and_later_jobs_do_not_call_it(running_pipeline) -> None:
    tenant = {"X-Forgeline-Tenant": "goner"}
    async with receiving() as receiver, running_pipeline(services=SERVICES, env=ENV) as p:
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30, headers=tenant) as http:
            receiver.secrets["/ok"] = (await http.post("/v1/webhooks/secret")).json()["secret"]
            private = await http.post("/v1/webhooks/endpoints", json={"url": "https://192.168.0.2/hook"})
            created = await http.post("/v1/webhooks/endpoints", json={"url": receiver.url("/gone")})
            assert created.status_code == 201, created.text
            endpoint = created.json()
            receiver.secrets["/gone"] = endpoint["secret"]
            receiver.scripts["/gone"] = [410]
            listed_before = (await http.get("/v1/webhooks/endpoints")).json()

            async def submit(prompt: str) -> str:
                accepted = await http.post("/v1/generations", json={
                    "prompt": prompt, "width": 128, "height": 128, "webhook_url": receiver.url("/ok")})
                assert accepted.status_code == 202, accepted.text
                return accepted.json()["job_id"]

            async def settled(job_id: str) -> list[dict]:
                async def check():
                    deliveries = (await http.get(f"/v1/generations/{job_id}/deliveries")).json()
                    return deliveries if deliveries and all(d["state"] != "pending" for d in deliveries) else None
                return await _until(f"the deliveries of {job_id} end", check)

            first = await submit("healing potion")
            await _completed(http, first)
            first_deliveries = await settled(first)
            listed_after = (await http.get("/v1/webhooks/endpoints")).json()
            second = await submit("mana potion")
            await _completed(http, second)
            second_deliveries = await settled(second)

    assert private.status_code == 422 and private.json()["detail"][0]["loc"] == ["body", "url"]
    assert endpoint["secret"].startswith("whsec_")
    assert all("secret" not in e for e in listed_before) and listed_before[0]["disabled_at"] is None
    assert {d["delivery_id"]: d["state"] for d in first_deliveries} == {"job": "delivered",
                                                                        endpoint["endpoint_id"]: "disabled"}
    (disabled,) = listed_after
    assert disabled["disabled_at"] is not None and "410" in disabled["disabled_reason"]
    assert [d["delivery_id"] for d in second_deliveries] == ["job"], "a disabled endpoint gets no new deliveries"
    gone = receiver.at("/gone")
    assert len(gone) == 1 and gone[0].verified["data"]["job_id"] == first
    assert [r.verified["data"]["job_id"] for r in receiver.at("/ok")] == [first, second]
