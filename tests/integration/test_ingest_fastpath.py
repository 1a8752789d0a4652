"""A cache hit held in memory, answered before FastAPI's routing (``services/ingest/fastpath.py``), against the
real Redis and Kafka: the same answers, headers, limits and metrics as the full route, and everything else
left to the route."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from services.common.contracts import GenerationCompleted, ImageSpec
from services.common.redis import KeySpace
from services.common.settings import Connections
from services.common.tenants import TenantLimits, TenantStore
from services.ingest import handlers
from services.ingest.settings import IngestSettings
from tests.integration.ingest_support import Api, api, locs, requested_count

pytestmark = pytest.mark.integration

SPEC = ImageSpec(prompt="ember shield", width=256, height=256, seed=3)
BODY = {"prompt": "ember shield", "width": 256, "height": 256, "seed": 3, "metadata": {"slot": "2"}}
URL = "https://cdn.example.com/images/ember-shield.png"


def _completed(tenant: str = "public") -> GenerationCompleted:
    return GenerationCompleted(
        job_id="earlierjob0002", tenant=tenant, url=URL, object_key="images/ember-shield.png", sha256="c" * 64,
        content_type="image/png", size_bytes=4321, spec=SPEC, path="primary", provider="procedural",
        deterministic=True)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def route_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each time the full route's ``handlers.submit`` runs, the prompt it got."""
    calls: list[str] = []
    submit = handlers.submit

    async def counted(body, tenant, idempotency_key, deps):
        calls.append(body.prompt)
        return await submit(body, tenant, idempotency_key, deps)

    monkeypatch.setattr(handlers, "submit", counted)
    return calls


async def _seeded(client: Api, tenant: str = "public") -> None:
    """The result in Redis and this process's memory, where ``tenant``'s requests find it."""
    await client.deps.cache.put(client.deps.cache_scope.key(SPEC, tenant), _completed(tenant))


async def test_a_hit_in_memory_is_answered_without_the_route_and_counted(connections: Connections, topics,
                                                                          route_calls: list[str]):
    async with api(connections) as client:
        await _seeded(client)
        requests_before = _metric("forgeline_ingest_requests_total", method="POST", route="/v1/generations",
                                  status="200")
        hits_before = _metric("forgeline_cache_lookups_total", result="hit_local")
        cached_before = _metric("forgeline_ingest_jobs_total", outcome="cached")

        response = await client.http.post("/v1/generations", json=BODY, headers={"X-Request-ID": "fast-1"})

        assert response.status_code == 200, response.text
        assert route_calls == []
        body = response.json()
        assert body.items() >= {"status": "completed", "cached": True, "url": URL, "sha256": "c" * 64,
                                "size_bytes": 4321, "provider": "procedural", "metadata": {"slot": "2"}}.items()
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == "fast-1"
        assert _metric("forgeline_ingest_requests_total", method="POST", route="/v1/generations",
                       status="200") == requests_before + 1
        assert _metric("forgeline_cache_lookups_total", result="hit_local") == hits_before + 1
        assert _metric("forgeline_ingest_jobs_total", outcome="cached") == cached_before + 1
        assert await requested_count(client.deps) == 0

        view = (await client.http.get(body["status_url"])).json()
        assert (view["status"], view["cached"], view["url"], view["tenant"]) == ("completed", True, URL, "public")


async def test_the_fast_and_the_full_path_give_the_same_answer(connections: Connections, topics):
    answers = {}
    for fast in (True, False):
        async with api(connections, IngestSettings(fast_cache_hits=fast)) as client:
            await _seeded(client, "studio-c")
            response = await client.http.post("/v1/generations", json=BODY, headers={"X-Forgeline-Tenant": "studio-c"})
            assert response.status_code == 200, response.text
            job_id = response.json()["job_id"]
            answers[fast] = (response.text.replace(job_id, "<job>"),
                             (await client.http.get(f"/v1/generations/{job_id}")).json()["tenant"])
    assert answers[True] == answers[False]
    assert answers[True][1] == "studio-c"


async def test_a_hit_spends_a_token_and_carries_the_ratelimit_headers(connections: Connections, topics, redis,
                                                                       route_calls: list[str]):
    store = TenantStore(redis, KeySpace(connections.redis.key_prefix), lookup_ttl_s=0)
    await store.set_limits("studio-a", TenantLimits(rate_per_s=0.2, burst=2))
    _, key = await store.create_key("studio-a")
    async with api(connections, IngestSettings(tenant_keys=True)) as client:
        await _seeded(client, "studio-a")
        answers = [await client.http.post("/v1/generations", json=BODY, headers={"Authorization": f"Bearer {key}"})
                   for _ in range(3)]

        assert [r.status_code for r in answers] == [200, 200, 429], [r.text for r in answers]
        assert route_calls == []
        assert answers[0].headers["ratelimit-policy"] == '"tenant";q=2;w=10'
        assert answers[0].headers["ratelimit"] == '"tenant";r=1;t=5'
        limited = answers[2]
        assert (limited.headers["retry-after"], limited.headers["ratelimit"]) == ("5", '"tenant";r=0;t=10')
        assert "rate limit of tenant 'studio-a'" in limited.json()["detail"]
        assert key not in limited.text
        view = (await client.http.get(answers[0].json()["status_url"], headers={"X-API-Key": key})).json()
        assert view["tenant"] == "studio-a"

        unknown = await client.http.post("/v1/generations", json=BODY, headers={"Authorization": "Bearer fl_x_y"})
        assert unknown.status_code == 401  # the route's answer
        assert route_calls == []  # refused by its dependencies, before the handler


async def test_what_is_not_a_plain_hit_in_memory_goes_to_the_route(connections: Connections, topics,
                                                                  route_calls: list[str]):
    async with api(connections) as client:
        await _seeded(client)

        replayable = await client.http.post("/v1/generations", json=BODY, headers={"Idempotency-Key": "shield-1"})
        assert replayable.status_code == 200 and replayable.json()["cached"] is True
        assert route_calls == ["ember shield"]

        invalid = await client.http.post("/v1/generations", json=BODY | {"width": "256"})
        assert invalid.status_code == 422 and locs(invalid) == [["body", "width"]]

        bad_tenant = await client.http.post("/v1/generations", json=BODY, headers={"X-Forgeline-Tenant": "no spaces"})
        assert bad_tenant.status_code == 422 and ["header", "X-Forgeline-Tenant"] in locs(bad_tenant)

        not_json = await client.http.post("/v1/generations", content=b"{}", headers={"content-type": "text/plain"})
        assert not_json.status_code == 422

        # In Redis only (another replica stored it): the route reads it, and this process keeps it.
        other = ImageSpec(prompt="ember helm", width=256, height=256)
        await client.deps.redis.set(client.deps.keys.key("cache", client.deps.cache_scope.key(other, "public")),
                                    _completed().model_copy(update={"spec": other}).to_json_bytes())
        first = await client.http.post("/v1/generations", json={"prompt": "ember helm", "width": 256, "height": 256})
        again = await client.http.post("/v1/generations", json={"prompt": "ember helm", "width": 256, "height": 256})
        assert (first.status_code, again.status_code) == (200, 200)
        assert route_calls == ["ember shield", "ember helm"]  # the second was answered from memory

        miss = await client.http.post("/v1/generations", json=BODY | {"seed": 4})
        assert miss.status_code == 202
        assert route_calls[-1] == "ember shield" and len(route_calls) == 3
        # Another tenant's result does not answer (the cache is scoped per tenant by default).
        elsewhere = await client.http.post("/v1/generations", json=BODY, headers={"X-Forgeline-Tenant": "studio-z"})
        assert elsewhere.status_code == 202 and len(route_calls) == 4
        assert await requested_count(client.deps) == 2
