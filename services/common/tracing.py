"""OpenTelemetry traces across Kafka: one trace per job, from the POST to the completed event.

Every record already carries a W3C ``traceparent`` header (:func:`services.common.kafka.event_headers`).
With tracing on, each process exports spans over OTLP/HTTP and continues that header::

    ingest   POST /v1/generations (FastAPI) ─▶ <topic> send ─┐
    router   <requested> process ─▶ <primary|fallback> send ─┤ each "process" span's parent is the
    generator <path> process ─▶ provider <name> ─▶ POST … (httpx) ─▶ send ─┤ "send" span whose
    storage  <generated> process ─▶ (S3) ─▶ <completed> send ─┤ context the record's header carries
    comparer <comparison.requested> process ─▶ <completed> send ─┘

plus a span per Redis command (sanitised: command names only) and per outgoing HTTP call. The hooks
are small on purpose: :func:`consumed` (the consumer loop, around a record), :func:`producing` (every
produce), :func:`instrument_app` (ingest) and :func:`start` (the process's start-up).

Off by default, and then free: no tracer provider, exporter or instrumentation is loaded, and every
hook returns at its first line. On when ``FORGELINE_TRACING_ENABLED=true``, or when an OTLP endpoint is set
(``FORGELINE_TRACING_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` turns it off whatever else says.
The SDK reads its other standard variables itself (``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``, ``OTEL_TRACES_SAMPLER``).

Why our own Kafka spans rather than ``opentelemetry-instrumentation-aiokafka``: that package appends
a second ``traceparent`` header next to the one our contract carries (two values for one name), and
its receive spans end when ``getmany`` returns, before the handler runs, each fetch making a root
trace of its own; the loop processes records concurrently long after the fetch, so the span that
matters is the one around the handler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, AnyHttpUrl, Field
from pydantic_settings import BaseSettings

from services.common.contracts import Event, TraceContext
from services.common.settings import service_config

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider

#: Requests that are polled all day and would bury the jobs' traces.
UNTRACED_URLS = "/healthz,/readyz,/metrics"


class TracingSettings(BaseSettings):
    """Whether this process exports traces, and where to."""

    model_config = service_config("FORGELINE_TRACING_")

    enabled: bool | None = Field(
        None, description="Force tracing on or off; unset: on when an OTLP endpoint is configured.")
    otlp_endpoint: AnyHttpUrl | None = Field(
        None, description="Base URL of an OTLP/HTTP (protobuf) receiver, e.g. http://collector:4318; spans "
                          "go to <it>/v1/traces. Unset: the standard OTEL_EXPORTER_OTLP_* variables decide.")
    otel_endpoint: str | None = Field(
        None, validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="The SDK's own endpoint variables: setting one turns tracing on.")
    sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")

    @property
    def on(self) -> bool:
        if self.sdk_disabled:
            return False
        if self.enabled is not None:
            return self.enabled
        return self.otlp_endpoint is not None or self.otel_endpoint is not None


class _Tracing:
    """The live side, built only when tracing is on (so only then are the OpenTelemetry modules imported)."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self.tracer = provider.get_tracer("forgeline")
        self._kinds = trace.SpanKind
        self._in_context = trace.set_span_in_context
        self._propagator = TraceContextTextMapPropagator()

    async def consumed(self, record: ConsumerRecord, group: str, work: Coroutine[Any, Any, None]) -> None:
        carrier = {name: value.decode("ascii", "replace") for name, value in record.headers or ()
                   if name in ("traceparent", "tracestate") and value is not None}
        attributes = {
            "messaging.system": "kafka", "messaging.operation.type": "process",
            "messaging.destination.name": record.topic, "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset, "messaging.consumer.group.name": group,
        }
        if record.key is not None:
            attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
        with self.tracer.start_as_current_span(f"{record.topic} process", context=self._propagator.extract(carrier),
                                               kind=self._kinds.CONSUMER, attributes=attributes):
            await work

    @contextlib.contextmanager
    def producing(self, topic: str, event: Event) -> Iterator[str]:
        attributes = {"messaging.system": "kafka", "messaging.operation.type": "send",
                      "messaging.destination.name": topic, "messaging.kafka.message.key": event.job_id}
        with self.tracer.start_as_current_span(f"{topic} send", kind=self._kinds.PRODUCER,
                                               attributes=attributes) as span:
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier, context=self._in_context(span))
            yield carrier["traceparent"]

    def span(self, name: str, attributes: Mapping[str, str]) -> contextlib.AbstractContextManager[Any]:
        return self.tracer.start_as_current_span(name, attributes=attributes)


_active: _Tracing | None = None  # set by start(): None means tracing is off and every hook does nothing


def start(service: str, settings: TracingSettings, environ: Mapping[str, str]) -> TracerProvider | None:
    """Set up tracing for this process (``service`` names it), if ``settings`` turn it on.

    Call once, before any HTTP or Redis client is made: the instrumentations patch their classes.
    Returns the provider (``stop`` flushes it), or None when tracing is off.
    """
    global _active
    if not settings.on:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise RuntimeError(f"tracing is on, but the OpenTelemetry packages are missing ({exc.name}): "
                           "pip install 'forgeline[otel]', or unset the OTLP endpoint") from None

    # Our attributes win over OTEL_SERVICE_NAME: one environment is often shared by all the services.
    resource = Resource.create({"service.name": service, "service.namespace": "forgeline"})
    sampler = None if environ.get("OTEL_TRACES_SAMPLER") else _entry_points_sampler()
    provider = TracerProvider(resource=resource, sampler=sampler)
    endpoint = f"{str(settings.otlp_endpoint).rstrip('/')}/v1/traces" if settings.otlp_endpoint else None
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)
    RedisInstrumentor().instrument(tracer_provider=provider)
    _active = _Tracing(provider)
    return provider


def stop() -> None:
    """Export what is still buffered and turn tracing off (the end of the process)."""
    global _active
    if _active is not None:
        _active.provider.shutdown()
        _active = None


def _entry_points_sampler():
    """Sample every trace that starts at a request or a record, and none that starts elsewhere.

    Background work (the router's depth reading, key-pool refreshes) makes Redis and HTTP calls
    with no parent span: each would be a trace of its own, many per second, hiding the jobs.
    A span with a parent follows its parent's decision, as the W3C ``sampled`` flag says.
    """
    from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
    from opentelemetry.trace import SpanKind

    entry_kinds = {SpanKind.SERVER, SpanKind.CONSUMER, SpanKind.PRODUCER}

    class EntryPoints(Sampler):
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None) -> SamplingResult:
            decision = Decision.RECORD_AND_SAMPLE if kind in entry_kinds else Decision.DROP
            return SamplingResult(decision, attributes if decision is Decision.RECORD_AND_SAMPLE else None)

        def get_description(self) -> str:
            return "EntryPoints{server,consumer,producer}"

    return ParentBased(root=EntryPoints())


# ---------------------------------------------------------------------------------------- hooks


def consumed(record: ConsumerRecord, group: str, work: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None]:
    """``work`` (processing ``record``) inside a consumer span continued from the record's ``traceparent``."""
    return work if _active is None else _active.consumed(record, group, work)


def producing(topic: str, event: Event) -> contextlib.AbstractContextManager[str]:
    """A producer span around one send; yields the ``traceparent`` the record's header should carry
    (the event's own when tracing is off)."""
    return contextlib.nullcontext(event.trace.traceparent) if _active is None else _active.producing(topic, event)


def stamped(event: Event, traceparent: str) -> Event:
    """``event`` with ``traceparent`` in its body too: for events that start a job's trace (ingest's
    requests), whose later events derive their trace from it."""
    if event.trace.traceparent == traceparent:
        return event
    return event.model_copy(update={"trace": TraceContext(traceparent=traceparent, tracestate=event.trace.tracestate)})


def span(name: str, **attributes: str) -> contextlib.AbstractContextManager[Any]:
    """A span of our own around a step worth seeing in the trace (a provider call)."""
    return contextlib.nullcontext() if _active is None else _active.span(name, attributes)


def instrument_app(app: FastAPI) -> None:
    """Server spans for ingest's requests (none for health and metrics polls), continued from a
    caller's ``traceparent``."""
    if _active is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, tracer_provider=_active.provider, excluded_urls=UNTRACED_URLS,
                                       exclude_spans=["receive", "send"])
