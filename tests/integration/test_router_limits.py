"""The router's tenant limits for Kafka-native requests, on real Redis: the bucket and the in-flight cap
ingest applies, shared with it, and nothing for a request ingest admitted already."""

from __future__ import annotations

import pytest

from services.common import contracts as c
from services.common.jobs import RedisJobStore
from services.common.ratelimit import RateLimiter, in_flight_key
from services.common.redis import KeySpace
from services.common.settings import Connections
from services.common.tenants import Caller, TenantLimits, TenantStore
from services.router.limits import KafkaNativeLimits

pytestmark = pytest.mark.integration


def _request(tenant: str) -> c.GenerationRequested:
    return c.GenerationRequested(job_id=c.new_job_id(), tenant=tenant, spec=c.ImageSpec(prompt="bone flute"))


@pytest.fixture
def parts(connections: Connections, redis):
    keys = KeySpace(connections.redis.key_prefix)
    tenants, limiter, jobs = TenantStore(redis, keys, lookup_ttl_s=0), RateLimiter(redis, keys), RedisJobStore(redis, keys)
    return keys, tenants, limiter, jobs, KafkaNativeLimits(tenants, limiter, jobs)


async def test_the_in_flight_cap_refuses_a_kafka_native_request_until_a_job_ends(parts, redis):
    keys, tenants, _limiter, jobs, limits = parts
    await tenants.set_limits("studio-k", TenantLimits(max_in_flight=1))
    first, second = _request("studio-k"), _request("studio-k")

    assert await limits.refusal(first) is None
    assert await redis.zscore(in_flight_key(keys, "studio-k"), first.job_id) is not None  # it holds the slot
    refused = await limits.refusal(second)
    assert refused is not None and refused.job_id == second.job_id
    assert (refused.error.code, refused.error.stage, refused.error.retryable) == ("rate_limited", "router", True)
    assert "1 jobs in flight, its limit (max_in_flight)" in refused.error.message
    assert refused.error.retry_after_s == 1.0

    await jobs.update(first.job_id, "completed", tenant="studio-k")  # its terminal status frees the slot
    assert await limits.refusal(_request("studio-k")) is None


async def test_ingest_and_the_router_draw_on_one_bucket_and_an_admitted_job_is_not_charged_twice(parts):
    _keys, tenants, limiter, jobs, limits = parts
    await tenants.set_limits("studio-k", TenantLimits(rate_per_s=1 / 60, burst=2))
    caller = Caller(tenant="studio-k", key_id=None, tenant_limits=await tenants.limits("studio-k"))
    assert (await limiter.admit(caller)).allowed  # an HTTP request through ingest spends the first token
    through_ingest = _request("studio-k")
    await jobs.update(through_ingest.job_id, "queued", tenant="studio-k")

    assert await limits.refusal(through_ingest) is None  # admitted by ingest: no second token
    assert await limits.refusal(_request("studio-k")) is None  # the bucket's last token
    refused = await limits.refusal(_request("studio-k"))
    assert refused is not None and "'studio-k' is over its rate limit" in refused.error.message
    assert refused.error.retry_after_s >= 1
    assert await limits.refusal(_request("someone-else")) is None  # no limits registered: never refused


async def test_a_terminal_status_after_redis_forgot_its_scripts_still_lands_and_frees_the_slot(parts, redis):
    keys, tenants, _limiter, jobs, limits = parts
    await tenants.set_limits("studio-k", TenantLimits(max_in_flight=1))
    first = _request("studio-k")
    assert await limits.refusal(first) is None
    await redis.script_flush()  # as after a restart without persistence

    assert await jobs.update(first.job_id, "completed", tenant="studio-k") is True

    assert (await jobs.get(first.job_id)).status == "completed"
    assert await redis.zscore(in_flight_key(keys, "studio-k"), first.job_id) is None
