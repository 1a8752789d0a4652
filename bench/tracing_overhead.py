"""What the consumer loop's tracing hooks cost per record: off (the default) and on, against no hooks.

    python bench/tracing_overhead.py [-n 20000]

Per record, as the loop does it: run a handler coroutine, then build one output's headers. "on"
exports to an exporter that drops the spans (so the figure is the SDK's work, not a network's).
Prints µs per record and the ratio of each to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiokafka import ConsumerRecord
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from services.common import contracts as c
from services.common import tracing
from services.common.kafka import event_headers

TOPIC = "bench.generation.requested"


class _Dropped(SpanExporter):
    def export(self, spans) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _handler() -> None:
    return None


async def _records(n: int, record: ConsumerRecord, event: c.Event, hooks: bool) -> float:
    started = time.perf_counter()
    for _ in range(n):
        if hooks:
            await tracing.consumed(record, "bench", _handler())
            with tracing.producing(TOPIC, event) as traceparent:
                event_headers(event, traceparent)
        else:
            await _handler()
            event_headers(event)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000)
    n = parser.parse_args().n
    event = c.GenerationRequested(job_id="bench-job-0001", tenant="bench", spec=c.ImageSpec(prompt="axe"))
    record = ConsumerRecord(TOPIC, 0, 0, 0, 0, b"bench-job-0001", event.to_json_bytes(), None, 0, 0,
                            event_headers(event))

    baseline = asyncio.run(_records(n, record, event, hooks=False))
    off = asyncio.run(_records(n, record, event, hooks=True))
    provider = TracerProvider(sampler=tracing._entry_points_sampler())
    provider.add_span_processor(BatchSpanProcessor(_Dropped()))
    tracing._active = tracing._Tracing(provider)  # what start() sets up, minus the OTLP exporter
    on = asyncio.run(_records(n, record, event, hooks=True))
    tracing.stop()

    print(f"{n} records, µs per record (handler + one output's headers)")
    for name, value in (("no hooks (baseline)", baseline), ("tracing off", off), ("tracing on", on)):
        print(f"  {name:20} {value:8.2f} µs   {value / baseline:6.2f}x baseline")


if __name__ == "__main__":
    main()
