"""GET /v1/status against the real Redis and Kafka: providers' keys and breakers, and the budget."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from services.common.bootstrap import bootstrap
from services.common.breaker import RedisCircuitBreaker
from services.common.budget import RedisBudgetLedger, usd
from services.common.keypool import ApiKey, RedisKeyPool
from services.common.redis import KeySpace
from services.common.settings import BudgetSettings, Connections
from services.common.tenants import TenantLimits, TenantStore
from services.ingest.app import build_deps, create_app
from services.ingest.settings import IngestSettings

pytestmark = pytest.mark.integration

KEY_A = "sk-openai-test-aaaaaaaaaaaaaaaaaaaa1111"
KEY_B = "sk-openai-test-bbbbbbbbbbbbbbbbbbbb2222"

PROVIDERS = """\
primary:
  - name: procedural
    type: procedural
fallback:
  - name: openai
    type: openai
    cost_usd: "0.04"
    keys_env: FORGELINE_TEST_OPENAI_KEYS
"""


@asynccontextmanager
async def status_api(connections: Connections, settings: IngestSettings, *,
                     environ: Mapping[str, str] | None = None,
                     budget: BudgetSettings | None = None) -> AsyncIterator[httpx.AsyncClient]:
    async with bootstrap(connections, budget=budget, environ=environ) as infra:
        deps = await build_deps(settings, infra)
        transport = httpx.ASGITransport(app=create_app(deps))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as http:
            yield http


async def test_status_shows_masked_keys_open_breakers_and_the_budget(
        connections: Connections, topics, redis, tmp_path: Path):
    providers_file = tmp_path / "providers.yaml"
    providers_file.write_text(PROVIDERS)
    keys = KeySpace(connections.redis.key_prefix)

    cooled, healthy = ApiKey("openai", KEY_A), ApiKey("openai", KEY_B)
    pool = RedisKeyPool(redis, keys, "openai", [cooled, healthy])
    await pool.cooldown(cooled, 600, "429 from the provider")
    await pool.record(healthy, True)
    breaker = RedisCircuitBreaker(redis, keys, "openai", threshold=2)
    await breaker.failure()
    assert await breaker.failure() is not None  # the second failure opens it
    ledger = RedisBudgetLedger(redis, keys, cap_micros=usd("10"))
    assert await ledger.reserve("job-1", usd("0.04")) is not None

    settings = IngestSettings(providers_file=providers_file)
    environ = {"FORGELINE_TEST_OPENAI_KEYS": f"{KEY_A},{KEY_B}"}
    async with status_api(connections, settings, environ=environ,
                          budget=BudgetSettings(cap_usd=Decimal("10"))) as http:
        response = await http.get("/v1/status")

    assert response.status_code == 200, response.text
    assert KEY_A not in response.text and KEY_B not in response.text
    assert KEY_A[-12:] not in response.text  # not even a long tail of it
    body = response.json()

    by_name = {p["name"]: p for p in body["providers"]}
    assert set(by_name) == {"procedural", "openai"}
    assert by_name["procedural"] == {
        "name": "procedural", "type": "procedural", "paths": ["primary"], "keys": [],
        "breaker": {"state": "closed", "consecutive_failures": 0, "down_until": None}}

    openai = by_name["openai"]
    assert (openai["type"], openai["paths"]) == ("openai", ["fallback"])
    assert openai["breaker"]["state"] == "open"
    assert openai["breaker"]["consecutive_failures"] == 2
    assert openai["breaker"]["down_until"] is not None

    keys_by_id = {k["key_id"]: k for k in openai["keys"]}
    assert set(keys_by_id) == {cooled.key_id, healthy.key_id}
    a, b = keys_by_id[cooled.key_id], keys_by_id[healthy.key_id]
    assert (a["masked"], a["state"], a["cooldown_reason"]) == (cooled.masked, "cooling_down", "429 from the provider")
    assert a["cooldown_until"] is not None and a["disabled_reason"] is None
    assert (b["masked"], b["state"], b["cooldown_until"], b["successes"], b["failures"]) == (
        healthy.masked, "healthy", None, 1, 0)
    assert all(set(k) == {"key_id", "masked", "state", "cooldown_until", "cooldown_reason", "disabled_reason",
                          "successes", "failures"} for k in openai["keys"])

    budget = body["budget"]
    assert (budget["cap"], budget["spent"], budget["reserved"]) == ("$10.00", "$0.00", "$0.04")
    assert budget["remaining"] == "$9.96"
    assert budget["month"] == ledger.current_month()


async def test_without_a_providers_file_no_providers_but_the_budget(connections: Connections, topics):
    async with status_api(connections, IngestSettings(), environ={"FORGELINE_TEST_OPENAI_KEYS": KEY_A},
                          budget=BudgetSettings(cap_usd=Decimal("5"))) as http:
        response = await http.get("/v1/status")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["providers"] == []
    assert (body["budget"]["cap"], body["budget"]["spent"], body["budget"]["reserved"], body["budget"]["remaining"]) \
        == ("$5.00", "$0.00", "$0.00", "$5.00")


async def test_keys_not_in_the_environment_are_not_listed(connections: Connections, topics, tmp_path: Path):
    providers_file = tmp_path / "providers.yaml"
    providers_file.write_text(PROVIDERS)
    async with status_api(connections, IngestSettings(providers_file=providers_file)) as http:
        response = await http.get("/v1/status")

    assert response.status_code == 200, response.text
    openai = next(p for p in response.json()["providers"] if p["name"] == "openai")
    assert openai["keys"] == []
    assert openai["breaker"]["state"] == "closed"


async def test_status_and_metrics_show_each_tenants_spend_against_its_own_cap(connections: Connections, topics, redis):
    keys = KeySpace(connections.redis.key_prefix)
    tenants = TenantStore(redis, keys)
    await tenants.set_limits("studio-a", TenantLimits(monthly_budget_usd=0.05))
    await tenants.set_limits("studio-b", TenantLimits())
    ledger = RedisBudgetLedger(redis, keys, cap_micros=usd("10"), tenants=tenants)
    assert await ledger.settle(await ledger.reserve("a1:replicate:1", usd("0.02"), tenant="studio-a"))
    assert await ledger.reserve("a2:replicate:1", usd("0.02"), tenant="studio-a")
    assert await ledger.reserve("b1:replicate:1", usd("0.01"), tenant="studio-b")
    assert await ledger.reserve("k1:replicate:1", usd("0.03"), tenant="kafka-only")  # never registered

    async with status_api(connections, IngestSettings(), budget=BudgetSettings(cap_usd=Decimal("10"))) as http:
        status = (await http.get("/v1/status")).json()
        metrics = (await http.get("/metrics")).text

    by_tenant = {t["tenant"]: t for t in status["budget"]["tenants"]}
    assert by_tenant["studio-a"] == {"tenant": "studio-a", "spent": "$0.02", "reserved": "$0.02", "cap": "$0.05",
                                     "remaining": "$0.01"}
    assert by_tenant["studio-b"] == {"tenant": "studio-b", "spent": "$0.00", "reserved": "$0.01", "cap": None,
                                     "remaining": None}
    assert status["budget"]["reserved"] == "$0.06"
    # Registered tenants get a label each; a name only a Kafka producer used is summed as "other".
    assert 'forgeline_budget_tenant_spent_micros{tenant="studio-a"} 20000.0' in metrics
    assert 'forgeline_budget_tenant_cap_micros{tenant="studio-a"} 50000.0' in metrics
    assert 'forgeline_budget_tenant_reserved_micros{tenant="other"} 30000.0' in metrics
    assert 'tenant="kafka-only"' not in metrics
