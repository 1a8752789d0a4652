"""Requests produced straight to Kafka are held to their tenant's limits by the router (real pipeline).

A tenant with a bucket of 2 that produces 5 requests at once gets 2 images and 3 ``rate_limited``
failures (one terminal event each, retryable, with when to send again); another tenant's requests
at the same moment are not touched.
"""

from __future__ import annotations

import asyncio

import pytest

from services.client import JobFailed, KafkaGenerationClient
from services.common.contracts import GenerationCompleted, ImageSpec
from services.common.redis import KeySpace, make_redis
from services.common.tenants import TenantLimits, TenantStore

pytestmark = [pytest.mark.e2e]


async def _burst(p, tenant: str, count: int) -> list[GenerationCompleted | BaseException]:
    async with KafkaGenerationClient(p.connections.kafka, p.connections.topics, tenant=tenant) as kafka:
        return await asyncio.gather(*(
            kafka.generate(ImageSpec(prompt=f"{tenant} rune stone {i}", width=64, height=64, seed=i), timeout_s=60)
            for i in range(count)), return_exceptions=True)


async def test_a_kafka_native_burst_beyond_the_bucket_fails_rate_limited_and_other_tenants_go_on(running_pipeline):
    async with running_pipeline() as p:
        redis = make_redis(p.connections.redis)
        try:
            tenants = TenantStore(redis, KeySpace(p.connections.redis.key_prefix))
            # A bucket that refills one token a minute: nothing refills during the test.
            await tenants.set_limits("kafka-burst", TenantLimits(rate_per_s=1 / 60, burst=2))
            await tenants.set_limits("kafka-calm", TenantLimits(rate_per_s=1 / 60, burst=3))
            limited, calm = await asyncio.gather(_burst(p, "kafka-burst", 5), _burst(p, "kafka-calm", 3))
        finally:
            await redis.aclose()

    completed = [r for r in limited if isinstance(r, GenerationCompleted)]
    refused = [r for r in limited if isinstance(r, JobFailed)]
    assert (len(completed), len(refused)) == (2, 3), limited
    for failure in refused:
        assert failure.detail["code"] == "rate_limited" and failure.detail["stage"] == "router"
        assert failure.detail["retryable"] is True and failure.detail["retry_after_s"] >= 1
        assert "'kafka-burst' is over its rate limit" in failure.detail["message"]
    assert all(isinstance(r, GenerationCompleted) and r.tenant == "kafka-calm" for r in calm), calm
