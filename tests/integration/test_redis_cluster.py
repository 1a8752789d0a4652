"""Every Lua-backed Redis adapter on a real three-master Redis Cluster: no CROSSSLOT anywhere.

Each adapter's keys of one script (or transaction) share a hash tag; these tests run the scripts
where a missing tag is an error, and first prove that the cluster does reject keys of two slots.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from services.common import contracts as c
from services.common.breaker import RedisCircuitBreaker
from services.common.budget import RedisBudgetLedger, usd
from services.common.cache import LruTtlCache, RedisResultCache
from services.common.jobs import RedisJobStore, RedisTerminalGuard
from services.common.keypool import ApiKey, NoKeyAvailable, RedisKeyPool
from services.common.provider_calls import RedisProviderCalls
from services.common.redis import KeySpace
from services.common.route_stats import RedisRouteStats
from services.ingest.handlers import _RELEASE
from tests.fakes import MemorySpendJournal
from tests.integration.redis_cluster import redis_cluster

pytestmark = pytest.mark.integration

KEYS = KeySpace("cluster-test:")
COST = usd("0.0023")


@pytest.fixture(scope="module")
def cluster_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    folder: Path = tmp_path_factory.mktemp("redis-cluster")
    with redis_cluster(folder) as ports:
        yield ports


@pytest.fixture
async def cluster(cluster_ports: list[int]) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster_ports[0])
    await client.initialize()
    await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    try:
        yield client
    finally:
        await client.aclose()


async def test_the_cluster_has_three_masters_and_rejects_keys_of_two_slots(cluster, cluster_ports):
    masters = [node for node in cluster.get_nodes() if node.server_type == "primary"]
    assert len(masters) == 3
    assert cluster.keyslot("a") != cluster.keyslot("b")
    # Straight to a node, past the client's own check: the server refuses a script over two slots.
    node = Redis(host="127.0.0.1", port=cluster_ports[0])
    try:
        with pytest.raises(ResponseError, match="CROSSSLOT|don't hash to the same slot"):
            await node.eval("return redis.call('MSET', KEYS[1], 1, KEYS[2], 2)", 2, "a", "b")
    finally:
        await node.aclose()


async def test_key_pool(cluster):
    now = [1_000.0]
    keys = [ApiKey("replicate", "r8_" + ch * 30) for ch in "abc"]
    pool = RedisKeyPool(cluster, KEYS, "replicate", keys, clock=lambda: now[0])
    assert {(await pool.pick()).key_id for _ in range(3)} == {k.key_id for k in keys}
    assert await pool.cooldown(keys[0], 30, "rate_limited") == 1_030.0
    await pool.disable(keys[1], "401")
    assert {(await pool.pick()).key_id for _ in range(4)} == {keys[2].key_id}
    await pool.disable(keys[2], "401")
    with pytest.raises(NoKeyAvailable) as caught:
        await pool.pick()
    assert caught.value.retry_after_s == 30.0
    assert await pool.enable(keys[1].key_id)
    await pool.record(keys[1], ok=True)
    states = {s.key_id: s.state for s in await pool.states()}
    assert states == {keys[0].key_id: "cooling_down", keys[1].key_id: "healthy", keys[2].key_id: "disabled"}


async def test_job_store_and_terminal_guard(cluster):
    jobs, guard = RedisJobStore(cluster, KEYS), RedisTerminalGuard(cluster, KEYS)
    for _ in range(6):  # several jobs, so several slots and nodes
        job_id = c.new_job_id()
        assert await jobs.update(job_id, "queued", tenant="studio")
        assert await jobs.update(job_id, "routed", route="primary")
        assert not await jobs.update(job_id, "queued")
        view = await jobs.get(job_id)
        assert (view.status, view.route, view.tenant) == ("routed", "primary", "studio")
        assert [v.status for _, v in await jobs.changes(job_id, block_ms=10)] == ["queued", "routed"]
        failed = c.GenerationFailed(job_id=job_id, tenant="studio", error=c.ErrorInfo(
            code="x", message="m", stage="generator", retryable=False))
        assert not await guard.finished(job_id)
        assert await guard.claim(failed) == failed
        await guard.mark_published(job_id)
        assert await guard.claim(failed) is None and await guard.finished(job_id)
    holding = [n for n in cluster.get_primaries() if await cluster.dbsize(target_nodes=n)]
    assert len(holding) >= 2, "every job landed on one node: the test would prove nothing"


async def test_budget_ledger_and_its_rebuild(cluster):
    journal = MemorySpendJournal()
    ledger = RedisBudgetLedger(cluster, KEYS, cap_micros=3 * COST, journal=journal,
                               clock=lambda: datetime(2025, 3, 14, tzinfo=UTC))
    a = await ledger.reserve("job-a:replicate:1", COST)
    b = await ledger.reserve("job-b:replicate:1", COST)
    assert (await ledger.reserve("job-a:replicate:1", COST)).replayed
    assert await ledger.settle(a) and await ledger.refund(b) and not await ledger.settle(a)
    snap = await ledger.snapshot()
    assert (snap.spent_micros, snap.reserved_micros) == (COST, 0)

    await cluster.delete(*[k async for k in cluster.scan_iter(match=KEYS.key("{budget}") + "*")])  # lost
    snap = await ledger.snapshot()
    assert (snap.spent_micros, snap.reserved_micros) == (COST, 0)  # rebuilt from the journal
    assert await ledger.reserve("job-c:replicate:1", COST) and await ledger.reserve("job-d:replicate:1", COST)
    assert await ledger.reserve("job-e:replicate:1", COST) is None


async def test_breaker_cache_route_stats_calls_and_idempotency_release(cluster):
    now = [1_000.0]
    breaker = RedisCircuitBreaker(cluster, KEYS, "replicate", threshold=2, cooldown_s=60, clock=lambda: now[0])
    assert await breaker.failure() is None and await breaker.failure() == 1_060.0
    assert not await breaker.allows()

    cache = RedisResultCache(cluster, KEYS, ttl_s=60, local=LruTtlCache(0, 0))
    assert await cache.get("k") is None
    assert (await cache.stats()) == {"miss": 1}

    stats = RedisRouteStats(cluster, KEYS)
    await stats.count("primary")
    assert await stats.counts() == {"primary": 1}

    calls = RedisProviderCalls(cluster, KEYS)
    assert await calls.claim("job-1", "replicate", 1, ttl_s=5) and not await calls.claim("job-1", "replicate", 1, 5)
    assert await calls.record("job-1", "replicate", 1, "pred-1")
    await calls.close("job-1", "replicate", 1)
    assert (await calls.current("job-1", "replicate")).seq == 2

    key = KEYS.key("idem", "studio", hashlib.sha256(b"order-1").hexdigest())
    value = json.dumps({"job_id": "job-1"})
    await cluster.set(key, value)
    assert await cluster.eval(_RELEASE, 1, key, value) == 1 and await cluster.get(key) is None
