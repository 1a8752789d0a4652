"""``forgeline simulate``: a day of routing on a simulated clock, per policy: cost, waits, misses, a plot.

Runs the router's own decision code (``services.simulator``); starts nothing and sleeps nowhere.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from services.cli._console import fail, progress, read_settings
from services.router.settings import RouterSettings
from services.simulator import (
    Scenario,
    Spaces,
    Summary,
    TraceError,
    compared,
    game_day,
    plot,
    read_trace,
    rows,
    run_policy,
    sweeps,
    verdict,
)
from services.simulator.report import COLUMNS, floor_under, markdown_table

SWEEPS = ("policies", "spaces", "cap")

out = Console(width=None if Console().is_terminal else 200)


def simulate(
    trace: Annotated[Path | None, typer.Option(help="CSV of arrivals: time_s, deadline_s, priority, prompt_hash, "
                                                    "allow_placeholder. Default: the built-in game day.")] = None,
    hours: Annotated[float, typer.Option(min=0.1, max=24 * 31, help="Hours of the built-in day to run.")] = 24.0,
    seed: Annotated[int, typer.Option(help="Seed of the built-in day and of the providers' luck.")] = 7,
    spaces: Annotated[int, typer.Option(min=1, max=100, help="Free Spaces (one image at a time each).")] = 2,
    cap: Annotated[float | None, typer.Option(min=0, help="Monthly paid budget in USD, prorated to the "
                                                          "simulated span (default: no cap).")] = None,
    sweep: Annotated[str, typer.Option(help="policies (the fixed rule's thresholds and the deadline policy's "
                                            "max wait), spaces=1,2,3 or cap=10,30,60 (monthly USD).")] = "policies",
    p95_target: Annotated[float, typer.Option(help="For --sweep spaces: the p95 wait (s) to keep under.")] = 60.0,
    plot_to: Annotated[str, typer.Option("--plot", help="Where to draw cost vs p95 wait (PNG); empty: no plot.")] =
        "simulate.png",
    markdown: Annotated[bool, typer.Option(help="Print the tables as Markdown (for the README).")] = False,
) -> None:
    """Simulate a day of routing: the fixed depth-50 rule, the router's old and new policies, a sweep."""
    settings = read_settings(RouterSettings)
    try:
        arrivals = read_trace(trace) if trace else game_day(seed, hours=hours)
    except (OSError, TraceError) as exc:
        raise fail(str(exc), "see `forgeline simulate --help` for the trace's columns") from None
    if not arrivals:
        raise fail("the trace has no arrivals")
    kind, _, values = sweep.partition("=")
    if kind not in SWEEPS or (kind == "policies") == bool(values):
        raise fail(f"--sweep {sweep!r}: expected policies, spaces=N,N… or cap=USD,USD…")
    try:
        points = sorted(float(value) for value in values.split(",")) if values else []
    except ValueError:
        raise fail(f"--sweep {sweep!r}: the values must be numbers separated by commas") from None
    span_s = arrivals[-1].at
    # The router is told how many Spaces it has (FORGELINE_ROUTER_PRIMARY_SLOTS), in every run.
    settings = settings.model_copy(update={"primary_slots": spaces})
    scenario = Scenario(spaces=Spaces(count=spaces), refresh_s=settings.depth_refresh_s,
                        rate_window_s=settings.rate_window_s, cap_usd=_prorated(cap, span_s))
    progress(f"{len(arrivals):,} requests over {span_s / 3600:.1f} h, {spaces} free Spaces, "
             f"cap {'none' if cap is None else f'${cap:g}/month'}, seed {seed}")

    if kind == "policies":
        summaries = [run_policy(policy, arrivals, scenario, seed=seed) for policy in compared(settings)]
        _table("per policy", summaries, markdown)
        swept = [run_policy(policy, arrivals, scenario, seed=seed) for policy in sweeps(settings)]
        _table("sweeps", swept, markdown)
        fixed, deadline = summaries[0], summaries[2]
        same_spend = dataclasses.replace(scenario, cap_usd=fixed.cost_usd)
        at_fixed_spend = run_policy(compared(settings)[2], arrivals, same_spend, seed=seed, name="deadline, capped "
                                    f"at the fixed rule's ${fixed.cost_usd:.2f}")
        _table("at the fixed rule's spend", [at_fixed_spend], markdown)
        lanes = _with_lanes(settings, arrivals, scenario, seed)
        _table("with priority lanes on the primary (simulated only: the pipeline has one primary topic)", lanes,
               markdown)
        floor = floor_under(fixed, scenario)
        out.print(verdict(fixed, deadline, summaries[1], at_fixed_spend, floor,
                          floor_under(fixed, scenario, tail_share=0.0)))
        if plot_to:
            waits = sorted({s.wait_p95 for s in summaries + swept} | {floor.wait_p95})
            plot(summaries + swept + [s for s in lanes if s.family == "deadline, lanes"], Path(plot_to),
                 title=f"{len(arrivals):,} requests, {spaces} free Spaces: paid cost against p95 wait",
                 floor=[floor_under(fixed, scenario, wait_p95=wait) for wait in waits],
                 target=(fixed.wait_p95, fixed.cost_per_day_usd / 2))
            progress(f"plot written to {plot_to}")
        return

    for value in points:
        if kind == "spaces" and (value < 1 or value != int(value)):
            raise fail(f"--sweep spaces: {value:g} is not a whole number of Spaces >= 1")
        if kind == "cap" and value < 0:
            raise fail(f"--sweep cap: {value:g} is below 0")
    answers = []
    for value in points:
        swept_scenario = dataclasses.replace(scenario, spaces=Spaces(count=int(value))) if kind == "spaces" else \
            dataclasses.replace(scenario, cap_usd=_prorated(value, span_s))
        label = f"{int(value)} Spaces" if kind == "spaces" else f"cap ${value:g}/month"
        swept_settings = settings.model_copy(update={"primary_slots": int(value)}) if kind == "spaces" else settings
        summaries = [run_policy(policy, arrivals, swept_scenario, seed=seed, name=f"{policy.name}, {label}")
                     for policy in compared(swept_settings)]
        _table(label, summaries, markdown)
        answers.append((value, summaries))
    out.print(_answer(kind, answers, p95_target, span_s, scenario.paid.price_usd))


def _with_lanes(settings: RouterSettings, arrivals: list, scenario: Scenario, seed: int) -> list[Summary]:
    """The three policies and the deadline policy's max-wait sweep, the Spaces taking urgent jobs first."""
    laned = dataclasses.replace(scenario, primary_order="lanes")
    policies = compared(settings) + [policy for policy in sweeps(settings) if policy.family.startswith("deadline")]
    return [dataclasses.replace(run_policy(policy, arrivals, laned, seed=seed, name=f"{policy.name}, lanes"),
                                family="deadline, lanes" if policy.family.startswith("deadline") else "lanes")
            for policy in policies]


def _prorated(monthly_usd: float | None, span_s: float) -> float | None:
    return None if monthly_usd is None else monthly_usd * span_s / (30 * 86_400)


def _table(title: str, summaries: list[Summary], markdown: bool) -> None:
    if markdown:
        out.print(f"\n**{title}**\n\n{markdown_table(summaries)}\n", soft_wrap=True, highlight=False)
        return
    table = Table(title=title, title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "policy" else "right")
    for row in rows(summaries):
        table.add_row(*row)
    out.print(table)


def _answer(kind: str, answers: list[tuple[float, list[Summary]]], p95_target: float, span_s: float,
            price_usd: float) -> str:
    """The capacity question's answer per policy: the fewest Spaces under the p95 target, the lowest cap not reached."""
    lines = []
    for index, name in enumerate(("fixed depth 50", "hysteresis", "deadline")):
        if kind == "spaces":
            enough = [(value, s[index]) for value, s in answers if s[index].wait_p95 <= p95_target]
            lines.append(f"{name}: " + (f"{int(enough[0][0])} Spaces keep p95 wait <= {p95_target:g} s "
                                        f"(${enough[0][1].cost_per_day_usd:.2f}/day)" if enough else
                                        f"no Spaces count swept keeps p95 wait <= {p95_target:g} s"))
        else:
            covered = [(value, s[index]) for value, s in answers
                       if s[index].cost_usd <= _prorated(value, span_s) - price_usd]
            lines.append(f"{name}: " + (f"a ${covered[0][0]:g}/month cap is never reached (spends "
                                        f"${covered[0][1].cost_per_day_usd * 30:.2f}/month at this load)"
                                        if covered else "every cap swept runs out at this load"))
    return "\n".join(lines)
