"""What a simulation runs against: the arrivals, the free Spaces, the paid providers and the budget.

Arrivals come from a trace file or from :func:`game_day`, a built-in day shaped like the load
Forgeline was designed for (200–500 requests an hour, an evening peak past 1,000, bursts when an
item drops, popular prompts served from the cache).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from services.common.contracts import Priority
from services.router.settings import RouterSettings

DAY_S = 24 * 3600.0

#: A trace file's columns; ``deadline_s`` may be empty (no deadline), the rest have defaults.
TRACE_COLUMNS = ("time_s", "deadline_s", "priority", "prompt_hash", "allow_placeholder")


@dataclass(frozen=True)
class Arrival:
    """One request as the router receives it (cache hits included: the router answers those itself)."""

    at: float
    prompt_hash: str
    deadline_s: float | None = None
    priority: Priority = "standard"
    allow_placeholder: bool = False


@dataclass(frozen=True)
class Spaces:
    """The free path: ``count`` Spaces, one image at a time each, with outages and cold starts."""

    count: int = 2
    service_s: tuple[float, float] = (20.0, 60.0)
    #: Outages per Space per day (Poisson), each lasting a uniform time in ``outage_s``.
    outages_per_day: float = 1.0
    outage_s: tuple[float, float] = (600.0, 1800.0)
    #: A Space idle this long sleeps; the next image first waits ``cold_start_s`` for it to wake.
    sleep_after_s: float = 1800.0
    cold_start_s: tuple[float, float] = (30.0, 90.0)


@dataclass(frozen=True)
class Paid:
    """The paid path (Replicate-like): unlimited parallel calls, lognormal latency, a price per image."""

    price_usd: float = 0.0023
    median_s: float = 5.0
    sigma: float = 0.35
    #: Share of calls that meet a cold model, and what that adds.
    cold_share: float = 0.03
    cold_s: float = 40.0
    placeholder_s: float = 0.2


@dataclass(frozen=True)
class Scenario:
    """Everything but the arrivals and the policy; every figure is a knob of ``forgeline simulate``."""

    spaces: Spaces = field(default_factory=Spaces)
    paid: Paid = field(default_factory=Paid)
    #: Paid spend allowed over the simulated span (None: no cap).
    cap_usd: float | None = None
    cache_ttl_s: float = DAY_S
    #: The router's depth refresh and rate window (``FORGELINE_ROUTER_DEPTH_REFRESH_S``, ``_RATE_WINDOW_S``).
    refresh_s: float = RouterSettings.model_fields["depth_refresh_s"].default
    rate_window_s: float = RouterSettings.model_fields["rate_window_s"].default
    #: How the Spaces take waiting jobs: ``fifo`` (the primary topic today) or ``lanes`` (urgent first; see
    #: ``engine.LaneQueue``: the pipeline has no such lanes yet, so this answers what they would buy).
    primary_order: Literal["fifo", "lanes"] = "fifo"


@dataclass(frozen=True)
class GameDay:
    """The built-in day's shape. Hourly request rates are interpolated between the ``levels`` points."""

    levels: tuple[tuple[float, float], ...] = (
        (0, 260), (3, 200), (6, 200), (9, 300), (12, 400), (15, 380), (18, 480),
        (19, 900), (20.5, 1150), (22, 1000), (23, 450), (24, 260))
    #: Item drops: (hour, requests), within ``drop_minutes``; most ask for the drop's few new items.
    drops: tuple[tuple[float, int], ...] = ((11.0, 250), (16.5, 300), (21.0, 400))
    drop_minutes: float = 10.0
    drop_items: int = 6
    drop_item_share: float = 0.6
    #: Distinct prompts and how skewed their popularity is (Zipf exponent): that sets the cache hit rate.
    catalogue: int = 40_000
    zipf_s: float = 1.0
    #: Request kinds: (share, deadline_s or None, priority, allow_placeholder).
    kinds: tuple[tuple[float, float | None, Priority, bool], ...] = (
        (0.10, 120.0, "standard", True),   # a player waits in a crafting screen
        (0.02, 60.0, "high", True),        # a purchase confirmation
        (0.38, 900.0, "standard", False),  # loot shown later in the session
        (0.30, 3600.0, "standard", False),  # rewards shown at the next login
        (0.20, None, "standard", False),   # pre-generated catalogue art
    )

    def rate_per_s(self, at: float) -> float:
        hour = (at % DAY_S) / 3600.0
        for (h0, r0), (h1, r1) in zip(self.levels, self.levels[1:], strict=False):
            if h0 <= hour <= h1:
                return (r0 + (r1 - r0) * (hour - h0) / (h1 - h0)) / 3600.0
        raise ValueError(f"hour {hour} outside the levels")


def _zipf_sampler(rng: random.Random, n: int, s: float) -> Iterator[int]:
    weights = [1.0 / (k ** s) for k in range(1, n + 1)]
    cumulative, total = [], 0.0
    for weight in weights:
        total += weight
        cumulative.append(total)
    while True:
        yield from rng.choices(range(n), cum_weights=cumulative, k=1024)


def game_day(seed: int = 7, *, hours: float = 24.0, shape: GameDay | None = None) -> list[Arrival]:
    """A day of requests (or its first ``hours``): a non-homogeneous Poisson process plus the item drops."""
    shape = shape or GameDay()
    rng = random.Random(seed)
    end = hours * 3600.0
    peak = max(rate for _, rate in shape.levels) / 3600.0
    prompts = _zipf_sampler(rng, shape.catalogue, shape.zipf_s)
    kinds = [kind[1:] for kind in shape.kinds]
    shares = [kind[0] for kind in shape.kinds]

    def request(at: float, prompt: str) -> Arrival:
        deadline, priority, placeholder = rng.choices(kinds, weights=shares)[0]
        return Arrival(at, prompt, deadline, priority, placeholder)

    arrivals, at = [], 0.0
    while True:  # thinning: candidates at the peak rate, kept with probability rate(t) / peak
        at += rng.expovariate(peak)
        if at >= end:
            break
        if rng.random() * peak <= shape.rate_per_s(at):
            arrivals.append(request(at, f"p{next(prompts)}"))
    for number, (hour, count) in enumerate(shape.drops):
        start = hour * 3600.0
        for _ in range(count):
            drop_at = start + rng.random() * shape.drop_minutes * 60.0
            if drop_at >= end:
                continue
            item = rng.randrange(shape.drop_items) if rng.random() < shape.drop_item_share else None
            arrivals.append(request(drop_at, f"drop{number}-{item}" if item is not None else f"p{next(prompts)}"))
    arrivals.sort(key=lambda arrival: arrival.at)
    return arrivals


class TraceError(ValueError):
    """A trace file that cannot be read: names the line and the field."""


def read_trace(path: Path) -> list[Arrival]:
    """Arrivals from a CSV with a header naming ``TRACE_COLUMNS`` (only ``time_s`` and ``prompt_hash`` required)."""
    arrivals = []
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        missing = {"time_s", "prompt_hash"} - set(reader.fieldnames or ())
        if missing:
            raise TraceError(f"{path}: header lacks {', '.join(sorted(missing))} (columns: {', '.join(TRACE_COLUMNS)})")
        for line, row in enumerate(reader, start=2):
            arrivals.append(_arrival(row, f"{path}, line {line}"))
    arrivals.sort(key=lambda arrival: arrival.at)
    return arrivals


def _arrival(row: dict[str, str], where: str) -> Arrival:
    def number(name: str) -> float | None:
        text = (row.get(name) or "").strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise TraceError(f"{where}: {name} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise TraceError(f"{where}: {name} must be a finite number >= 0")
        return value

    at = number("time_s")
    if at is None:
        raise TraceError(f"{where}: time_s is empty")
    deadline = number("deadline_s")
    if deadline == 0:
        raise TraceError(f"{where}: deadline_s must be > 0 (leave it empty for no deadline)")
    priority = (row.get("priority") or "standard").strip() or "standard"
    if priority not in ("standard", "high"):
        raise TraceError(f"{where}: priority must be standard or high")
    prompt = (row.get("prompt_hash") or "").strip()
    if not prompt:
        raise TraceError(f"{where}: prompt_hash is empty")
    placeholder = (row.get("allow_placeholder") or "").strip().lower()
    if placeholder not in ("", "0", "1", "true", "false"):
        raise TraceError(f"{where}: allow_placeholder must be true or false")
    return Arrival(at, prompt, deadline, priority, placeholder in ("1", "true"))  # type: ignore[arg-type]
