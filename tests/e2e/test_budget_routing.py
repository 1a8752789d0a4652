"""Deadlines against a spent budget, through real processes: a placeholder when allowed, else primary."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from services.common import contracts as c
from services.common.jobs import job_key
from services.common.kafka import make_producer, send_event
from services.common.redis import KeySpace, make_redis
from tests.helpers import job_finished, records_for

pytestmark = pytest.mark.e2e

WITHOUT_PRIMARY = ["router", "generator-fallback", "storage", "ingest"]


async def _route_of(http: httpx.AsyncClient, job_id: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = await http.get(f"/v1/generations/{job_id}")
        if response.status_code == 200 and response.json().get("route"):
            return response.json()
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} was never routed")


def _request(prompt: str, **fields) -> c.GenerationRequested:
    return c.GenerationRequested(job_id=c.new_job_id(), tenant="kafka-native",
                                 spec=c.ImageSpec(prompt=prompt, width=64, height=64, seed=3), **fields)


async def test_spent_budget_and_a_missed_deadline_give_a_placeholder_only_when_allowed(running_pipeline):
    env = {"FORGELINE_BUDGET_CAP_USD": "0"}
    async with running_pipeline(services=WITHOUT_PRIMARY, env=env) as p:
        requested = p.topics.name("generation.requested")
        producer = make_producer(p.connections.kafka)
        redis = make_redis(p.connections.redis)
        await producer.start()
        try:
            async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
                # Nobody serves primary: the first job waits there, so the primary is backed up and stalled.
                first = _request("iron helm", deadline_s=2)
                await send_event(producer, requested, first)
                first_view = await _route_of(http, first.job_id)

                strict = _request("iron gauntlet", deadline_s=2)
                await send_event(producer, requested, strict)
                strict_view = await _route_of(http, strict.job_id)
                strict_hash = await redis.hgetall(job_key(KeySpace(p.connections.redis.key_prefix), strict.job_id))

                lenient = _request("iron greaves", deadline_s=2, allow_placeholder=True)
                await send_event(producer, requested, lenient)
                # Its status first (a stalled pipeline fails here, naming the stage), then its event from the start.
                lenient_view = await job_finished(http, lenient.job_id, timeout_s=60)
                [record] = await records_for(p.connections, p.topics.name("generation.completed"), lenient.job_id)
        finally:
            await producer.stop()
            await redis.aclose()

    assert first_view["route"] == "primary", first_view  # no paid path, and no wait at all: nothing missed
    assert strict_view["route"] == "primary", strict_view
    reason = strict_view["route_reason"]
    # One job ahead of two slots: no wait, but no 40 s image meets a 2 s deadline; and nothing is left to pay.
    assert "depth 1 on 2 slots" in reason and "measured 0.000/s" in reason, reason
    assert "deadline 2 s - 40 s to serve it" in reason and "monthly budget" in reason, reason
    assert strict_hash[b"estimated_wait_s"] == b"0" and strict_hash[b"service_rate"] == b"0"

    completed = c.decode(c.GenerationCompleted, record.value)
    assert completed.placeholder is True and completed.path == "fallback"
    assert completed.provider == "procedural-placeholder"
    assert lenient_view["status"] == "completed" and lenient_view["placeholder"] is True
    assert lenient_view["route"] == "fallback" and "placeholder" in lenient_view["route_reason"]
