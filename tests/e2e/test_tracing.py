"""Traces from the real processes: one connected trace per job, from the POST to the completed event.

The services export over OTLP/HTTP to a receiver in this test (``tests/otlp.py``); the primary path
is a fake Hugging Face Space over its real protocol, so the generator's provider call is HTTP.
"""

from __future__ import annotations

import base64
import secrets
from collections import defaultdict

import httpx
import pytest
import yaml

from services.common import contracts as c
from services.common.kafka import H_TRACEPARENT, headers_of
from services.fakeproviders import gradio
from services.fakeproviders.base import FakeProvider
from services.fakeproviders.server import serve_fake
from services.providers.procedural import render_icon
from services.storage.handlers import comparison_id_for
from tests.helpers import job_finished, records_for
from tests.otlp import ReceivedSpan, otlp_receiver

pytestmark = pytest.mark.e2e

KEY = "messaging.kafka.message.key"


def _trace_of(spans: list[ReceivedSpan], *keys: str) -> list[ReceivedSpan]:
    """Every span of the one trace the Kafka spans keyed by ``keys`` belong to."""
    keyed = {s.trace_id for s in spans if s.attributes.get(KEY) in keys}
    assert len(keyed) == 1, f"the records of {keys} are in {len(keyed)} traces, not one"
    (trace_id,) = keyed
    return [s for s in spans if s.trace_id == trace_id]


def _only(trace: list[ReceivedSpan], **match: str) -> ReceivedSpan:
    found = [s for s in trace if all(getattr(s, name) == value for name, value in match.items())]
    assert len(found) == 1, f"{len(found)} spans match {match}: {[(s.service, s.name) for s in trace]}"
    return found[0]


def _check_hop(trace: list[ReceivedSpan], topic: str, consumer: str) -> ReceivedSpan:
    """``consumer``'s span around the record of ``topic`` is a child of the span that sent that record."""
    by_id = {s.span_id: s for s in trace}
    process = _only(trace, service=consumer, name=f"{topic} process", kind="CONSUMER")
    sender = by_id.get(process.parent_span_id)
    assert sender is not None, f"{consumer}'s {topic} span has no parent in the trace"
    assert sender.kind == "PRODUCER" and sender.name == f"{topic} send", (sender.service, sender.name)
    return process


async def test_each_job_is_one_connected_trace_across_the_services(running_pipeline, tmp_path):
    space = FakeProvider("space-traced")
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    reference = render_icon(c.ImageSpec(prompt="bone dagger", width=64, height=64, seed=3))
    with otlp_receiver() as receiver:
        async with serve_fake(gradio.create_app(space)) as space_url:
            providers = tmp_path / "providers.yaml"
            providers.write_text(yaml.safe_dump({
                "primary": [{"name": "space-traced", "type": "gradio",
                             "options": {"space": "e2e/traced", "base_url": space_url}}],
                "fallback": [{"name": "procedural", "type": "procedural"}],
            }))
            env = {"FORGELINE_GENERATOR_PROVIDERS_FILE": str(providers),
                   "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}
            async with running_pipeline(env=env) as p, httpx.AsyncClient(base_url=p.ingest_url, timeout=30) as http:
                # A caller with a trace of its own: the job continues it.
                joined = await http.post("/v1/generations", json={"prompt": "ember lantern", "width": 64, "height": 64},
                                         headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"})
                compared = await http.post("/v1/generations", json={
                    "prompt": "bone dagger", "width": 64, "height": 64, "seed": 3,
                    "reference_image": "data:image/png;base64," + base64.b64encode(reference).decode()})
                assert joined.status_code == compared.status_code == 202, (joined.text, compared.text)
                first, second = joined.json()["job_id"], compared.json()["job_id"]
                views = [await job_finished(http, first), await job_finished(http, second)]
                completed = {job: await records_for(p.connections, p.topics.name("generation.completed"), job)
                             for job in (first, second)}
        # The pipeline has stopped here: every process flushed its spans on the way out.
    spans = receiver.spans

    assert [v["status"] for v in views] == ["completed", "completed"], views
    assert {v["provider"] for v in views} == {"space-traced"}
    assert receiver.bad_requests == []
    assert not [s for s in spans if "/readyz" in s.name or "/healthz" in s.name], "health polls are not traced"

    traces = {}
    for job, extra_keys, last_hop in ((first, (), "storage"), (second, (comparison_id_for(second),), "comparer")):
        trace = traces[job] = _trace_of(spans, job, *extra_keys)
        ids = {s.span_id for s in trace}
        roots = [s for s in trace if s.parent_span_id not in ids]
        assert len(roots) == 1, f"job {job}: {len(roots)} roots: {[(s.service, s.name) for s in roots]}"
        post = roots[0]
        assert (post.service, post.kind, post.name) == ("ingest", "SERVER", "POST /v1/generations")
        _check_hop(trace, p.topics.name("generation.requested"), "router")
        generating = _check_hop(trace, p.topics.name("generation.primary"), "generator-primary")
        _check_hop(trace, p.topics.name("generation.generated"), "storage")
        if last_hop == "comparer":
            _check_hop(trace, p.topics.name("comparison.requested"), "comparer")
        _check_hop(trace, p.topics.name("generation.completed"), "webhooks")  # a subscriber continues it too
        # The provider call: our span under the generator's record, the HTTP calls to the Space under it.
        provider = _only(trace, service="generator-primary", name="provider space-traced")
        assert provider.parent_span_id == generating.span_id
        http_calls = [s for s in trace if s.service == "generator-primary" and s.kind == "CLIENT"
                      and s.parent_span_id == provider.span_id]
        assert any(s.name == "POST" for s in http_calls), [(s.name, s.attributes) for s in http_calls]
        assert any(s.service == "storage" and s.kind == "CLIENT" and "redis" in str(s.attributes.values())
                   for s in trace), "storage's Redis commands are in the trace"
        # The completed record's header points at the span that sent it, in this trace.
        (record,) = completed[job]
        _version, trace_id, parent, _flags = headers_of(record)[H_TRACEPARENT].split("-")
        sender = {s.span_id: s for s in trace}[parent]
        assert trace_id == post.trace_id
        assert (sender.service, sender.name) == (last_hop, f"{p.topics.name('generation.completed')} send")
        body_trace = c.decode(c.GenerationCompleted, record.value).trace.traceparent.split("-")[1]
        assert body_trace == trace_id, "the event's body names the same trace as its header"

    assert traces[first][0].trace_id == caller_trace, "the caller's traceparent is continued"
    assert _only(traces[first], name="POST /v1/generations").parent_span_id == caller_span
    assert traces[second][0].trace_id != caller_trace
    per_service = defaultdict(int)
    for s in traces[second]:
        per_service[s.service] += 1
    assert set(per_service) == {"ingest", "router", "generator-primary", "storage", "comparer",
                                "webhooks"}, dict(per_service)
