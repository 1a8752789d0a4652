"""Per-tenant budgets through real processes: a tenant that spent its budget stays on the free path,
another tenant goes on paying, and /v1/status shows each one's spend.

Nobody serves primary and every job has a 2 s deadline, so each job the budget allows goes to the
paid fallback (a fake Replicate, $0.0023 an image, whose charge log counts the paid calls).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import yaml

from services.common.redis import KeySpace, make_redis
from services.common.tenants import TenantLimits, TenantStore
from services.fakeproviders import replicate
from services.fakeproviders.base import FakeProvider
from services.fakeproviders.server import serve_fake

pytestmark = pytest.mark.e2e

WITHOUT_PRIMARY = ["router", "generator-fallback", "storage", "ingest"]
REPLICATE_KEY = "r8_e2e-replicate-key-000000000015"


def _env(tmp_path, url: str) -> dict[str, str]:
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump({
        "primary": [{"name": "procedural", "type": "procedural"}],
        "fallback": [{"name": "replicate", "type": "replicate", "keys_env": "E2E_KEYS_REPLICATE", "cost_usd": 0.0023,
                      "options": {"model": "black-forest-labs/flux-schnell", "base_url": url,
                                  "poll_interval_s": 0.1}}],
    }))
    return {"FORGELINE_GENERATOR_PROVIDERS_FILE": str(path), "E2E_KEYS_REPLICATE": REPLICATE_KEY}


async def _submit(http: httpx.AsyncClient, tenant: str, prompt: str) -> str:
    answer = await http.post("/v1/generations", headers={"X-Forgeline-Tenant": tenant},
                             json={"prompt": prompt, "width": 64, "height": 64, "deadline_s": 2})
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


async def _view(http: httpx.AsyncClient, tenant: str, job_id: str, done: set[str], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = (await http.get(f"/v1/generations/{job_id}", headers={"X-Forgeline-Tenant": tenant})).json()
        if view.get("status") in done:
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {done}: {view}")


async def test_a_tenant_out_of_budget_stays_free_while_another_pays(running_pipeline, tmp_path):
    fake = FakeProvider("replicate")
    async with serve_fake(replicate.create_app(fake)) as url, \
            running_pipeline(services=WITHOUT_PRIMARY, env=_env(tmp_path, url)) as p:
        redis = make_redis(p.connections.redis)
        try:
            tenants = TenantStore(redis, KeySpace(p.connections.redis.key_prefix))
            await tenants.set_limits("studio-a", TenantLimits(monthly_budget_usd=0.0023))  # one paid image
            await tenants.set_limits("studio-b", TenantLimits(monthly_budget_usd=0.01))
        finally:
            await redis.aclose()
        async with httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
            paid_a = await _view(http, "studio-a", await _submit(http, "studio-a", "amber amulet"), {"completed"})
            spent_a = await _view(http, "studio-a", await _submit(http, "studio-a", "amber crown"), {"routed"})
            paid_b = await _view(http, "studio-b", await _submit(http, "studio-b", "jade amulet"), {"completed"})
            status = (await http.get("/v1/status")).json()
            charges = (await http.get(f"{url}/_fake/charges")).json()

    assert (paid_a["route"], paid_a["provider"]) == ("fallback", "replicate"), paid_a
    assert spent_a["route"] == "primary", spent_a
    assert "tenant 'studio-a''s monthly budget $0.0023 of $0.0023 spent" in spent_a["route_reason"], spent_a
    assert (paid_b["route"], paid_b["provider"]) == ("fallback", "replicate"), paid_b
    by_tenant = {t["tenant"]: t for t in status["budget"]["tenants"]}
    assert by_tenant["studio-a"] == {"tenant": "studio-a", "spent": "$0.0023", "reserved": "$0.00",
                                     "cap": "$0.0023", "remaining": "$0.00"}
    assert (by_tenant["studio-b"]["spent"], by_tenant["studio-b"]["remaining"]) == ("$0.0023", "$0.0077")
    assert status["budget"]["spent"] == "$0.0046"
    assert sorted(c["prompt"] for c in charges) == ["amber amulet", "jade amulet"], charges
