"""Tracing's switch, its cost when off, and which traces the sampler keeps."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.common import contracts as c
from services.common import tracing
from services.common.kafka import H_TRACEPARENT, event_headers
from services.common.tracing import TracingSettings


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> TracingSettings:
    for name in ("FORGELINE_TRACING_ENABLED", "FORGELINE_TRACING_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return TracingSettings()


@pytest.mark.parametrize(("env", "on"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"FORGELINE_TRACING_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"FORGELINE_TRACING_ENABLED": "true"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "FORGELINE_TRACING_ENABLED": "false"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"FORGELINE_TRACING_ENABLED": "true", "OTEL_SDK_DISABLED": "true"}, False),
])
def test_tracing_is_on_only_when_configured(monkeypatch, env, on):
    assert _settings(monkeypatch, **env).on is on


def test_a_bad_endpoint_is_refused_naming_the_setting(monkeypatch):
    with pytest.raises(ValueError, match="otlp_endpoint"):
        _settings(monkeypatch, FORGELINE_TRACING_OTLP_ENDPOINT="not a url")


def test_off_loads_no_tracing_sdk_and_the_hooks_hand_back_what_they_got():
    """A process with tracing off runs the consumer loop's and ingest's hooks with no tracer, exporter or
    instrumentation (redis and fastapi import parts of OpenTelemetry's API of their own accord)."""
    script = """
import sys
import httpx
from services.common import tracing
from services.common.consumer import ConsumerLoop
from services.common.contracts import GenerationRequested, ImageSpec
from services.ingest.app import create_app
assert tracing.start("router", tracing.TracingSettings(), {}) is None
event = GenerationRequested(job_id="j" * 12, tenant="t", spec=ImageSpec(prompt="axe"))
async def work():
    return None
coroutine = work()
assert tracing.consumed(object(), "group", coroutine) is coroutine
coroutine.close()
with tracing.producing("topic", event) as traceparent:
    assert traceparent == event.trace.traceparent
app = create_app(None)
tracing.instrument_app(app)
assert not [m for m in app.user_middleware if "OpenTelemetry" in repr(m.cls)]
assert not hasattr(httpx.AsyncClient.send, "__wrapped__")
print(sorted(name for name in sys.modules
             if name.startswith(("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter"))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_record_header_carries_the_producer_spans_context_and_a_job_starts_its_trace_there():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing._entry_points_sampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    live = tracing._Tracing(provider)
    event = c.GenerationRequested(job_id="job-traced-1", tenant="t", spec=c.ImageSpec(prompt="axe"))

    with live.producing("forgeline.generation.requested", event) as traceparent:
        stamped = tracing.stamped(event, traceparent)
    (send,) = exporter.get_finished_spans()
    context = send.get_span_context()

    assert traceparent == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert context.trace_flags.sampled
    assert dict(event_headers(stamped))[H_TRACEPARENT] == traceparent.encode()
    assert stamped.trace.traceparent == traceparent and event.trace.traceparent != traceparent
    assert send.kind is SpanKind.PRODUCER and send.attributes["messaging.kafka.message.key"] == "job-traced-1"
    assert tracing.stamped(stamped, traceparent) is stamped


def test_traces_start_at_requests_and_records_not_at_background_calls():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing._entry_points_sampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")

    with tracer.start_as_current_span("HGET", kind=SpanKind.CLIENT):  # the router's depth reading, say
        with tracer.start_as_current_span("under a dropped root"):
            pass
    with tracer.start_as_current_span("POST /v1/generations", kind=SpanKind.SERVER):
        with tracer.start_as_current_span("EVALSHA", kind=SpanKind.CLIENT):
            pass
    with tracer.start_as_current_span("topic process", kind=SpanKind.CONSUMER):
        pass

    assert sorted(s.name for s in exporter.get_finished_spans()) == ["EVALSHA", "POST /v1/generations",
                                                                     "topic process"]
