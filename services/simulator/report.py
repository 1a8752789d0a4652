"""A run's figures (cost, waits, misses), the per-policy table, and the cost vs p95 wait plot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.simulator.bound import least_paid
from services.simulator.engine import RunLog, simulate
from services.simulator.policies import NamedPolicy
from services.simulator.scenario import DAY_S, Arrival, Scenario


@dataclass(frozen=True)
class Summary:
    """One policy's run. Waits and totals are over generated images (cache hits excluded: they wait 0 anywhere)."""

    policy: str
    family: str
    requests: int
    cache_hits: int
    generated: int
    paid: int
    placeholders: int
    cost_usd: float
    cost_per_day_usd: float
    wait_s: tuple[float, float, float]
    total_s: tuple[float, float, float]
    with_deadline: int
    deadline_misses: int
    peak_depth: int
    #: The longest wait: a rule that parks a few jobs for hours shows it here, not in p95.
    wait_max_s: float = 0.0
    #: Arrival times of the generated jobs, for the bound on what any policy must pay.
    generated_at: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def share_paid(self) -> float:
        return self.paid / self.generated if self.generated else 0.0

    @property
    def cost_per_1000(self) -> float:
        return 1000 * self.cost_usd / self.requests if self.requests else 0.0

    @property
    def miss_rate(self) -> float:
        return self.deadline_misses / self.with_deadline if self.with_deadline else 0.0

    @property
    def wait_p95(self) -> float:
        return self.wait_s[1]


def summarise(name: str, family: str, log: RunLog) -> Summary:
    jobs = log.jobs
    served = [job for job in jobs if job.path != "cache"]
    if any(job.done is None for job in served):
        raise RuntimeError(f"{name}: {sum(job.done is None for job in served)} jobs never finished")
    waits = np.array([job.started - job.arrival.at for job in served]) if served else np.zeros(1)
    totals = np.array([job.done - job.arrival.at for job in served]) if served else np.zeros(1)
    deadline_jobs = [job for job in jobs if job.arrival.deadline_s is not None]
    misses = sum(1 for job in deadline_jobs
                 if job.path != "placeholder" and job.done - job.arrival.at > job.arrival.deadline_s)
    return Summary(
        policy=name, family=family, requests=len(jobs), cache_hits=len(jobs) - len(served), generated=len(served),
        paid=sum(job.path == "fallback" for job in jobs), placeholders=sum(job.path == "placeholder" for job in jobs),
        cost_usd=log.spent_usd, cost_per_day_usd=log.spent_usd * DAY_S / log.duration_s,
        wait_s=_percentiles(waits), total_s=_percentiles(totals),
        with_deadline=len(deadline_jobs), deadline_misses=misses, peak_depth=log.peak_depth,
        wait_max_s=float(waits.max()), generated_at=tuple(sorted(job.arrival.at for job in served)))


def _percentiles(values: np.ndarray) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return float(p50), float(p95), float(p99)


COLUMNS = ("policy", "images", "cache hits", "cost/day", "per 1,000", "paid", "wait p50/p95/p99/max s",
           "total p50/p95/p99 s", "deadline misses", "placeholders", "peak depth")


def rows(summaries: Sequence[Summary]) -> list[tuple[str, ...]]:
    def triple(values: tuple[float, float, float]) -> str:
        return " / ".join(f"{value:.0f}" for value in values)

    return [(s.policy, f"{s.requests:,}", f"{s.cache_hits:,}", f"${s.cost_per_day_usd:.2f}", f"${s.cost_per_1000:.3f}",
             f"{s.share_paid:.1%}", f"{triple(s.wait_s)} / {s.wait_max_s:.0f}", triple(s.total_s),
             f"{s.deadline_misses:,} ({s.miss_rate:.1%})", f"{s.placeholders:,}", str(s.peak_depth))
            for s in summaries]


def markdown_table(summaries: Sequence[Summary]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(summaries)]
    return "\n".join(lines)


@dataclass(frozen=True)
class Floor:
    """The least any policy pays on a run's arrivals at ``wait_p95`` (see ``bound.py``), and its share of a baseline's."""

    wait_p95: float
    paid: int
    cost_usd: float
    cost_per_day_usd: float
    share_of_baseline: float


def floor_under(baseline: Summary, scenario: Scenario, *, wait_p95: float | None = None,
                tail_share: float = 0.05) -> Floor:
    """The bound at ``wait_p95`` (default: ``baseline``'s), on the jobs ``baseline`` generated, the Spaces at mean speed.

    ``tail_share``: the jobs allowed to wait longer (0.05 for a p95; 0 asks that none does).
    """
    wait = baseline.wait_p95 if wait_p95 is None else wait_p95
    low, high = scenario.spaces.service_s
    capacity = scenario.spaces.count / ((low + high) / 2)
    paid = least_paid(baseline.generated_at, capacity_per_s=capacity, wait_s=wait, slots=scenario.spaces.count,
                      tail_share=tail_share)
    cost = paid * scenario.paid.price_usd
    per_day = cost * baseline.cost_per_day_usd / baseline.cost_usd if baseline.cost_usd else 0.0
    return Floor(wait, paid, cost, per_day, cost / baseline.cost_usd if baseline.cost_usd else 0.0)


def plot(summaries: Sequence[Summary], path: Path, *, title: str, floor: Sequence[Floor] = (),
         target: tuple[float, float] | None = None) -> None:
    """Cost per day against p95 wait, one point per run (labelled with its deadline misses), a line per family.

    ``floor``: the bound at several p95 waits, a dashed line no policy's point can be under;
    ``target``: ``(p95 wait, cost per day)`` the issue asks for, a star.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(10, 6), dpi=110)
    families: dict[str, list[Summary]] = {}
    for summary in summaries:
        families.setdefault(summary.family, []).append(summary)
    for family, points in families.items():
        points = sorted(points, key=lambda s: s.wait_p95)
        line = axes.plot([s.wait_p95 for s in points], [s.cost_per_day_usd for s in points], marker="o",
                         label=family, alpha=0.8)[0]
        below = family.startswith("fixed")  # the cheaper family's labels under its line, the others above
        for point in points:  # the miss rate is the third axis: what a cheaper point gives up
            axes.annotate(f"{point.policy}: {point.miss_rate:.1%} late", (point.wait_p95, point.cost_per_day_usd),
                          fontsize=7, rotation=-30 if below else 30, xytext=(3, -6 if below else 6),
                          textcoords="offset points", color=line.get_color(),
                          va="top" if below else "bottom", rotation_mode="anchor")
    if floor:
        axes.plot([f.wait_p95 for f in floor], [f.cost_per_day_usd for f in floor], color="grey", linestyle="--",
                  linewidth=1, label="least any policy pays (fluid bound)")
    if target is not None:
        axes.plot(*target, marker="*", markersize=12, color="black", linestyle="none",
                  label="the target: half the fixed rule's cost at its p95")
    axes.set_xlabel("p95 wait before generation starts (s)")
    axes.set_ylabel("paid cost per day (USD)")
    axes.set_ylim(0, 1.2 * max(s.cost_per_day_usd for s in summaries) + 0.01)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    pyplot.close(figure)


def run_policy(policy: NamedPolicy, arrivals: list[Arrival], scenario: Scenario, *, seed: int,
               name: str | None = None) -> Summary:
    """Simulate one policy and sum it up."""
    return summarise(name or policy.name, policy.family, simulate(arrivals, scenario, policy.factory, seed=seed))


def meets_target(fixed: Summary, candidate: Summary) -> bool:
    """The issue's target: at most half the fixed rule's cost, at an equal or better p95 wait and miss rate."""
    return (candidate.cost_usd <= 0.5 * fixed.cost_usd and candidate.wait_p95 <= fixed.wait_p95
            and candidate.miss_rate <= fixed.miss_rate)


def verdict(fixed: Summary, deadline: Summary, hysteresis: Summary, at_fixed_spend: Summary,
            floor: Floor | None = None, no_tail: Floor | None = None) -> str:
    """What the run says, in sentences: each policy against the fixed rule, the target, the same-spend run."""
    def versus(summary: Summary, baseline: Summary) -> str:
        ratio = summary.cost_usd / baseline.cost_usd if baseline.cost_usd else float("inf")
        return (f"{summary.policy}: {ratio:.0%} of {baseline.policy}'s cost, p95 wait {summary.wait_p95:.0f} s vs "
                f"{baseline.wait_p95:.0f} s, deadline misses {summary.miss_rate:.1%} vs {baseline.miss_rate:.1%}")

    target = "met" if meets_target(fixed, deadline) else "not met"
    bound = [] if floor is None else [
        f"the least any policy can pay at a p95 wait of {floor.wait_p95:.0f} s on these arrivals (fluid bound): "
        f"{floor.paid:,} images, ${floor.cost_per_day_usd:.2f}/day, {floor.share_of_baseline:.0%} of the fixed "
        "rule's cost" + (": no routing rule can meet the target here" if floor.share_of_baseline > 0.5 else "")]
    if no_tail is not None:
        bound.append(f"the same with no job waiting longer than {no_tail.wait_p95:.0f} s: {no_tail.paid:,} images, "
                     f"{no_tail.share_of_baseline:.0%} of the fixed rule's cost (one queue served in order comes "
                     "close to this: a job left waiting holds up every job behind it)")
    return "\n".join([
        versus(deadline, fixed), versus(hysteresis, fixed), versus(deadline, hysteresis),
        f"target (<= 50 % of the fixed rule's cost at an equal or better p95 wait and miss rate): {target}",
        *bound,
        f"at the fixed rule's spend (${fixed.cost_usd:.2f} as the cap): p95 wait {at_fixed_spend.wait_p95:.0f} s, "
        f"deadline misses {at_fixed_spend.miss_rate:.1%}, {at_fixed_spend.placeholders} placeholders",
    ])
