"""Starting the pipeline fails loudly, with the service's own words, when a service dies."""

from __future__ import annotations

import httpx
import pytest

from services.devstack.errors import DevStackError

pytestmark = pytest.mark.e2e


async def test_a_service_that_dies_at_start_fails_the_start_with_its_log(running_pipeline) -> None:
    with pytest.raises(DevStackError) as raised:
        async with running_pipeline(services=["storage", "router"],
                                    per_service_env={"router": {"FORGELINE_ROUTER_DEPTH_HIGH": "lots"}}):
            pass
    message = str(raised.value)
    assert "router exited" in message
    assert "FORGELINE_ROUTER_DEPTH_HIGH" in message or "depth_high" in message  # the settings error, from its log


async def test_every_worker_reports_ready_before_start_returns(running_pipeline) -> None:
    async with running_pipeline(services=["router", "storage"]) as p:
        for name in ("router", "storage"):
            assert p.pipeline.process(name).is_running()
        ready = list(p.pipeline.ready_urls().values())
        assert len(ready) == 2
        async with httpx.AsyncClient() as http:
            for url in ready:
                response = await http.get(url)
                assert response.status_code == 200 and response.json()["checks"] == {"kafka": "ok"}
