"""What the dashboard shows, computed from ``/v1/status``, the latest completed jobs and the dead letters.

Pure functions: the page only puts each ``figures`` text into its box and draws the ``gallery``.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from services.common.jobs import JobView

RATE_WINDOW = timedelta(seconds=60)
# (figure name, from stage, to stage) over each job's timings.
STAGES = (("route", "accepted_at", "routed_at"), ("generate", "routed_at", "generated_at"),
          ("store", "generated_at", "stored_at"), ("total", "accepted_at", "completed_at"))


def percent(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.0f} %"


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"


def _usd(text: str) -> Decimal:
    return Decimal(text.lstrip("$"))


def _at(timings: Mapping[str, Any], name: str) -> datetime | None:
    value = timings.get(name)
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def stage_seconds(view: JobView, start: str, end: str) -> float | None:
    begin, finish = _at(view.timings, start), _at(view.timings, end)
    return (finish - begin).total_seconds() if begin and finish else None


def _p50_p95(values: Sequence[float]) -> str:
    if not values:
        return "no jobs yet"
    if len(values) == 1:
        return f"p50 {_seconds(values[0])} · p95 {_seconds(values[0])}"
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return f"p50 {_seconds(statistics.median(values))} · p95 {_seconds(cuts[18])}"


def _stage(views: Sequence[JobView], name: str) -> list[float]:
    _, start, end = next(stage for stage in STAGES if stage[0] == name)
    return [s for s in (stage_seconds(view, start, end) for view in views) if s is not None]


def _keys(providers: Sequence[Mapping[str, Any]], path: str) -> str:
    mine = [provider for provider in providers if path in provider["paths"]]
    states = Counter(key["state"] for provider in mine for key in provider["keys"])
    keys = ", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "no keys"
    open_ = [provider["name"] for provider in mine if provider["breaker"]["state"] != "closed"]
    return f"keys {keys} · " + (f"breaker open: {', '.join(open_)}" if open_ else "breakers closed")


#: Tenants named in the budget box; the rest are counted ("+3 more"): /v1/status lists them all.
TENANTS_SHOWN = 3


def tenant_spend(tenants: Sequence[Mapping[str, Any]]) -> str:
    """The tenants that spend most this month, each against its own cap when it has one."""
    if not tenants:
        return "no tenant spend yet"
    ranked = sorted(tenants, key=lambda t: (-(_usd(t["spent"]) + _usd(t["reserved"])), t["tenant"]))
    shown = [f"{t['tenant']} {t['spent']}" + (f" of {t['cap']}" if t.get("cap") else "")
             for t in ranked[:TENANTS_SHOWN]]
    more = len(ranked) - TENANTS_SHOWN
    return "tenants: " + ", ".join(shown) + (f" +{more} more" if more > 0 else "")


def figures(status: Mapping[str, Any], views: Sequence[JobView], dead_letters: Mapping[str, int],
            now: datetime) -> dict[str, str]:
    """Each box's text, by its ``data-figure`` key."""
    queues, routes, cache, budget = status["queues"], status["routes"], status["cache"], status["budget"]
    out = {f"queue.{path}": f"depth {queues[path]['depth']}" for path in ("primary", "fallback")}
    out["route.split"] = (f"primary {routes['primary']} · fallback {routes['fallback']} "
                          f"({percent(routes['fallback_share'])} paid)")
    reason = next((view.route_reason for view in views if view.route_reason), None)
    out["route.reasons"] = f"latest: {reason}" if reason else "no routed jobs yet"
    lookups = cache["hit_local"] + cache["hit_redis"] + cache["miss"]
    out["cache"] = f"hit rate {percent(cache['hit_rate'])} ({cache['hit_local'] + cache['hit_redis']} of {lookups})"
    cap = _usd(budget["cap"])
    used = (_usd(budget["spent"]) + _usd(budget["reserved"])) / cap if cap else None
    out["budget"] = f"{budget['spent']} spent + {budget['reserved']} held of {budget['cap']} ({percent(used)})"
    out["budget.tenants"] = tenant_spend(budget.get("tenants", ()))
    for path in ("primary", "fallback"):
        on_path = [view for view in views if view.route == path]
        recent = [view for view in on_path if (done := _at(view.timings, "completed_at")) and now - done <= RATE_WINDOW]
        out[f"rate.{path}"] = (f"{len(recent) / RATE_WINDOW.total_seconds():.2f} img/s · generate "
                               f"{_p50_p95(_stage(on_path, 'generate'))}")
        out[f"keys.{path}"] = _keys(status["providers"], path)
    out["stage.stored"] = f"store {_p50_p95(_stage(views, 'store'))}"
    out["latency.total"] = f"end to end {_p50_p95(_stage(views, 'total'))}"
    total = sum(dead_letters.values())
    out["dlq"] = "no dead letters" if not total else f"{total} dead letters: " + ", ".join(
        f"{topic} {count}" for topic, count in dead_letters.items() if count)
    return out


def gallery(views: Sequence[JobView], costs: Mapping[tuple[str, str], Decimal]) -> list[dict[str, Any]]:
    """One card per completed job, newest first: image, route, provider, latency, cost, comparison score."""
    cards = []
    for view in views:
        if view.status != "completed" or not view.url:
            continue
        result = view.result or {}
        comparison = result.get("comparison") or {}
        cost = costs.get((view.route or "", view.provider or ""))
        cards.append({
            "job_id": view.job_id, "url": view.url, "prompt": (result.get("spec") or {}).get("prompt"),
            "route": view.route, "route_reason": view.route_reason, "provider": view.provider,
            "latency_s": stage_seconds(view, "accepted_at", "completed_at"),
            "cost_usd": None if cost is None else f"{cost.normalize():f}",
            "score": comparison.get("score"), "band": comparison.get("band"), "band_color": comparison.get("band_color"),
        })
    return cards
