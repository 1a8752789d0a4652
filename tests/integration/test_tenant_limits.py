"""Tenants' keys and limits against the real Redis and Kafka: hashed keys, the shared token bucket,
429 with its headers, the in-flight cap, and two ingest processes drawing from one bucket."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time

import httpx
import pytest

from services.common.ratelimit import RateLimiter
from services.common.redis import KeySpace
from services.common.settings import Connections
from services.common.tenants import Limits, TenantLimits, TenantStore
from services.devstack.process import free_ports
from services.ingest.settings import IngestSettings
from tests.integration.ingest_support import api

pytestmark = pytest.mark.integration

BODY = {"prompt": "frost crystal longbow", "width": 64, "height": 64}


def _store(redis, connections: Connections) -> TenantStore:
    return TenantStore(redis, KeySpace(connections.redis.key_prefix), lookup_ttl_s=0)


async def test_keys_are_stored_hashed_and_revocable(redis, connections):
    store = _store(redis, connections)
    record, key = await store.create_key("studio-a", Limits(rate_per_s=2))

    everything = b"".join(v or b"" for v in await redis.mget(await redis.keys(connections.redis.key_prefix + "*")))
    assert key.encode() not in everything  # nowhere in plain text
    assert await redis.exists(connections.redis.key_prefix + "apikey:" + hashlib.sha256(key.encode()).hexdigest())
    assert (await store.caller(key)).tenant == "studio-a"
    assert (await store.caller(key)).key_limits.rate_per_s == 2

    assert (await store.revoke(record.key_id)).tenant == "studio-a"
    assert await store.caller(key) is None
    assert await store.revoke(record.key_id) is None


async def test_bucket_refuses_beyond_its_burst_and_tenants_are_independent(redis, connections):
    store, limiter = _store(redis, connections), RateLimiter(redis, KeySpace(connections.redis.key_prefix))
    await store.set_limits("studio-a", TenantLimits(rate_per_s=0.5, burst=3))
    await store.set_limits("studio-b", TenantLimits(rate_per_s=0.5, burst=3))
    _, key_a = await store.create_key("studio-a")
    _, key_b = await store.create_key("studio-b")
    a, b = await store.caller(key_a), await store.caller(key_b)

    decisions = [await limiter.admit(a) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    refused = decisions[3]
    assert (refused.reason, refused.retry_after_s) == ("rate", 2)  # one token at 0.5/s
    assert refused.headers(a) == {"RateLimit-Policy": '"tenant";q=3;w=6', "RateLimit": '"tenant";r=0;t=6',
                                  "Retry-After": "2"}
    assert [(await limiter.admit(b)).allowed for _ in range(3)] == [True] * 3  # b's bucket is its own


async def test_a_keys_own_bucket_is_stricter_than_its_tenants(redis, connections):
    store, limiter = _store(redis, connections), RateLimiter(redis, KeySpace(connections.redis.key_prefix))
    await store.set_limits("studio-a", TenantLimits(rate_per_s=0.5, burst=5))
    _, strict = await store.create_key("studio-a", Limits(rate_per_s=0.5, burst=2))
    _, loose = await store.create_key("studio-a")

    assert [(await limiter.admit(await store.caller(strict))).allowed for _ in range(3)] == [True, True, False]
    # The strict key spent two of the tenant's five tokens: the other key has three left.
    assert [(await limiter.admit(await store.caller(loose))).allowed for _ in range(4)] == [True, True, True, False]


async def test_api_answers_429_with_headers_and_other_tenants_go_on(connections, topics, redis):
    store = _store(redis, connections)
    await store.set_limits("studio-a", TenantLimits(rate_per_s=0.2, burst=3))
    _, key_a = await store.create_key("studio-a")
    _, key_b = await store.create_key("studio-b")
    async with api(connections, IngestSettings(tenant_keys=True)) as client:
        a = {"Authorization": f"Bearer {key_a}"}
        answers = [await client.http.post("/v1/generations", json=BODY | {"seed": i}, headers=a) for i in range(5)]
        assert [r.status_code for r in answers] == [202, 202, 202, 429, 429], [r.text for r in answers]
        assert answers[0].headers["ratelimit-policy"] == '"tenant";q=3;w=15'
        assert answers[0].headers["ratelimit"] == '"tenant";r=2;t=5'
        limited = answers[3]
        assert limited.headers["retry-after"] == "5"
        assert limited.headers["ratelimit"] == '"tenant";r=0;t=15'
        assert "rate limit of tenant 'studio-a'" in limited.json()["detail"]
        assert key_a not in limited.text

        other = await client.http.post("/v1/generations", json=BODY, headers={"X-API-Key": key_b})
        assert other.status_code == 202 and "ratelimit" not in other.headers  # no limits set for studio-b
        unknown = await client.http.post("/v1/generations", json=BODY, headers={"Authorization": "Bearer fl_x_y"})
        assert unknown.status_code == 401


async def test_in_flight_cap_refuses_the_next_job_until_one_ends(connections, topics, redis):
    store = _store(redis, connections)
    await store.set_limits("studio-a", TenantLimits(max_in_flight=2))
    _, key = await store.create_key("studio-a")
    async with api(connections, IngestSettings(tenant_keys=True)) as client:
        auth = {"Authorization": f"Bearer {key}"}
        first, second, third = [await client.http.post("/v1/generations", json=BODY | {"seed": i}, headers=auth)
                                for i in range(3)]
        assert (first.status_code, second.status_code, third.status_code) == (202, 202, 429)
        assert "2 jobs in flight" in third.json()["detail"]

        await client.deps.jobs.update(first.json()["job_id"], "failed", tenant="studio-a",
                                      error={"code": "x", "stage": "generator", "message": "x", "retryable": False})
        fourth = await client.http.post("/v1/generations", json=BODY | {"seed": 9}, headers=auth)
        assert fourth.status_code == 202, fourth.text


def _ingest_process(connections: Connections, port: int) -> subprocess.Popen:
    env = os.environ | {
        "FORGELINE_KAFKA_BOOTSTRAP": connections.kafka.bootstrap,
        "FORGELINE_REDIS_URL": connections.redis.url.get_secret_value(),
        "FORGELINE_REDIS_KEY_PREFIX": connections.redis.key_prefix,
        "FORGELINE_TOPICS_PREFIX": connections.topics.prefix,
        "FORGELINE_INGEST_PORT": str(port),
        "FORGELINE_INGEST_TENANT_KEYS": "true",
    }
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", "ingest"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def _ready(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"ingest exited: {process.stderr.read().decode()[-2000:]}")
            try:
                if (await http.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"ingest at {url} was not ready in {timeout_s} s")


async def test_two_ingest_processes_share_one_bucket(connections, topics, redis):
    store = _store(redis, connections)
    await store.set_limits("studio-a", TenantLimits(rate_per_s=0.1, burst=6))
    _, key = await store.create_key("studio-a")
    ports = free_ports(2)
    processes = [_ingest_process(connections, port) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, process in zip(urls, processes, strict=True):
            await _ready(url, process)
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {key}"}) as http:
            answers = await asyncio.gather(*(http.post(urls[i % 2] + "/v1/generations", json=BODY | {"seed": i})
                                             for i in range(12)))
        codes = [r.status_code for r in answers]
        # Six tokens in all: with a bucket per replica, twelve would have been accepted.
        assert (codes.count(202), codes.count(429)) == (6, 6), codes
        assert all(r.headers["ratelimit-policy"] == '"tenant";q=6;w=60' for r in answers)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
