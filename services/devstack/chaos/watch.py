"""How fast each stage moves again after a fault: the services' own record counters, sampled.

Every half second the sampler reads ``forgeline_records_total{outcome="ok"}`` from each worker's
``/metrics`` (and which pid serves it, since a restarted process counts from zero). After the
run, a stage has recovered from a fault at the first sample after the repair whose count is past
the one at the repair — or, for a new process, above zero.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.devstack.pipeline import Pipeline

WORKERS: tuple[str, ...] = ("router", "generator-primary", "generator-fallback", "storage", "comparer")


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the run began
    pid: int | None
    ok: float | None  # records done; None when the metrics did not answer


def records_done(metrics_text: str) -> float:
    """The sum of ``forgeline_records_total`` samples with ``outcome="ok"``."""
    return sum(sample.value for family in text_string_to_metric_families(metrics_text)
               for sample in family.samples
               if sample.name == "forgeline_records_total" and sample.labels.get("outcome") == "ok")


class Sampler:
    """Samples every worker until cancelled; ``samples[name]`` is in time order."""

    def __init__(self, pipeline: Pipeline, clock: Callable[[], float], interval_s: float = 0.5) -> None:
        self.pipeline, self.clock, self.interval_s = pipeline, clock, interval_s
        self.samples: dict[str, list[Sample]] = {name: [] for name in WORKERS}

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                urls = self.pipeline.ready_urls()
                await asyncio.gather(*(self._sample(http, name, urls.get(name)) for name in WORKERS))
                await asyncio.sleep(self.interval_s)

    async def _sample(self, http: httpx.AsyncClient, name: str, ready_url: str | None) -> None:
        pid, ok = self.pipeline.process(name).pid(), None
        if pid is not None and ready_url is not None:
            try:
                response = await http.get(ready_url.removesuffix("/readyz") + "/metrics")
                if response.status_code == 200:
                    ok = records_done(response.text)
            except httpx.HTTPError:
                pass
        self.samples[name].append(Sample(self.clock(), pid, ok))


def moved_again(samples: list[Sample], since: float) -> float | None:
    """Seconds from ``since`` until the stage completed a record again, or None if it never did."""
    times = [s.at for s in samples]
    start = bisect_left(times, since)
    before = samples[start - 1] if start > 0 else None
    for sample in samples[start:]:
        if sample.ok is None or sample.pid is None:
            continue
        fresh = before is None or before.pid != sample.pid or before.ok is None
        if sample.ok > (0 if fresh else before.ok):
            return round(sample.at - since, 2)
    return None


def first_after(moments: list[float], since: float) -> float | None:
    """Seconds from ``since`` to the first of ``moments`` (sorted) at or after it."""
    i = bisect_left(moments, since)
    return round(moments[i] - since, 2) if i < len(moments) else None


def monotonic_clock() -> Callable[[], float]:
    """Seconds since now."""
    began = time.monotonic()
    return lambda: time.monotonic() - began
