"""The result cache's scope on real Redis and S3: storage stores one tenant's result, ingest answers from it.

Per tenant by default: tenant B asking for the very image tenant A got is queued for its own job,
never handed A's URL. ``FORGELINE_CACHE_SCOPE=shared`` answers B from A's result at once.
"""

from __future__ import annotations

import pytest

from services.common import contracts as c
from services.common.bootstrap import bootstrap
from services.common.settings import CacheSettings, Connections
from services.storage.app import build as build_storage
from services.storage.settings import StorageSettings
from tests.fakes import FAKE_PNG
from tests.integration.ingest_support import api, requested_count

pytestmark = pytest.mark.integration

BODY = {"prompt": "sapphire   war hammer", "width": 256, "height": 256, "seed": 3}


def _generated_for(tenant: str) -> c.GenerationGenerated:
    request = c.GenerationRequested(job_id=c.new_job_id(), tenant=tenant, metadata={"owner": tenant},
                                    spec=c.ImageSpec(prompt="sapphire war hammer", width=256, height=256, seed=3))
    routed = c.GenerationRouted.from_request(
        request, c.RouteDecision(path="primary", reason="test", primary_depth=0, threshold=10))
    return c.GenerationGenerated.from_routed(routed, image=FAKE_PNG, content_type="image/png", provider="hf-space-a",
                                             model="m", deterministic=False)


async def _store(connections: Connections, cache: CacheSettings, generated: c.GenerationGenerated) -> str:
    """Storage's handler on the real bucket and cache; returns the URL of the completed event."""
    async with bootstrap(connections, cache=cache) as infra:
        handler = await build_storage(StorageSettings(), infra)
        [output] = (await handler.handle(generated)).outputs
    assert isinstance(output.event, c.GenerationCompleted)
    return output.event.url


@pytest.mark.parametrize("scope", ["tenant", "shared"])
async def test_a_tenant_is_answered_from_another_tenants_result_only_when_the_cache_is_shared(
        connections: Connections, topics, scope):
    cache = CacheSettings(scope=scope)
    url = await _store(connections, cache, _generated_for("studio-a"))

    async with api(connections, cache=cache) as client:
        own = await client.http.post("/v1/generations", json=BODY, headers={"X-Forgeline-Tenant": "studio-a"})
        theirs = await client.http.post("/v1/generations", json=BODY, headers={"X-Forgeline-Tenant": "studio-b"})
        queued = await requested_count(client.deps)

    assert own.status_code == 200, own.text  # its own result, whatever the scope
    assert (own.json()["cached"], own.json()["url"]) == (True, url)
    if scope == "tenant":
        assert theirs.status_code == 202, theirs.text
        assert theirs.json()["status"] == "queued" and url not in theirs.text
        assert queued == 1  # B's request went to the pipeline for an image of its own
    else:
        assert theirs.status_code == 200, theirs.text
        assert (theirs.json()["cached"], theirs.json()["url"]) == (True, url)
        assert queued == 0
