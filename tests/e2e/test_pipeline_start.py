"""Starting the pipeline fails loudly, with the service's own words, when a service dies."""

from __future__ import annotations

import importlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


async def test_a_failed_start_leaves_none_of_the_services_it_started_running(running_pipeline, monkeypatch) -> None:
    pipeline_module = importlib.import_module("services.devstack.pipeline")
    start = pipeline_module.Pipeline.start
    seen: dict[str, bool] = {}

    def start_and_look(self, *args, **kwargs):  # what runs the moment start gives up, before any caller cleans up
        try:
            return start(self, *args, **kwargs)
        except DevStackError:
            seen.update({name: self.process(name).is_running() for name in ("storage", "router")})
            raise

    monkeypatch.setattr(pipeline_module.Pipeline, "start", start_and_look)
    with pytest.raises(DevStackError, match="router exited"):
        async with running_pipeline(services=["storage", "router"],
                                    per_service_env={"router": {"FORGELINE_ROUTER_DEPTH_HIGH": "lots"}}):
            pass
    assert seen == {"storage": False, "router": False}, "storage started, then was left running"


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


async def test_a_worker_whose_metrics_port_was_taken_is_started_on_another(running_pipeline, monkeypatch) -> None:
    """The port picked for a worker can be taken before it binds it; and whoever holds it may answer
    /readyz with a 200. The start must not take that for the worker, and must start it again."""
    pipeline_module = importlib.import_module("services.devstack.pipeline")  # the package's `pipeline` is a function

    class Impostor(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 — the stdlib's name
            body = json.dumps({"ready": True, "checks": {"kafka": "ok"}, "pid": 1}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    impostor = ThreadingHTTPServer(("0.0.0.0", 0), Impostor)  # noqa: S104 — where the worker binds, too
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    taken, real = impostor.server_address[1], pipeline_module.free_ports
    handed = iter([[taken]])
    monkeypatch.setattr(pipeline_module, "free_ports", lambda count: next(handed, None) or real(count))
    try:
        async with running_pipeline(services=["router"]) as p:
            url = p.pipeline.ready_urls()["router"]
            assert f":{taken}/" not in url, "the router was moved to another port"
            async with httpx.AsyncClient() as http:
                answer = (await http.get(url)).json()
            assert answer["pid"] == p.pipeline.process("router").pid() and answer["checks"] == {"kafka": "ok"}
        assert "Address already in use" in p.pipeline.process("router").log_path.read_text()
    finally:
        impostor.shutdown()
        impostor.server_close()
