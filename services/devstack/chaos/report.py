"""The chaos run's figures: one JSON-able record, and the table a person reads."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from services.devstack.chaos.audit import KafkaRecord, Paid, orphans
from services.devstack.chaos.faults import FaultRecord
from services.devstack.chaos.load import Load

if TYPE_CHECKING:
    from services.devstack.chaos.run import ChaosConfig

EXAMPLES = 5  # job ids listed per finding; the counts are complete


@dataclass
class ChaosReport:
    run_id: str
    config: dict[str, Any]
    elapsed_s: float
    requests: int
    accepted: int  # requests answered 200/202
    not_accepted: dict[str, int]  # "rejected" (4xx), "gave_up" (5xx / no answer until the client gave up)
    jobs: int  # distinct job ids the client was given
    terminal: int  # of those, jobs with a terminal event on Kafka
    completed: int
    failed: int
    failed_codes: dict[str, int]  # error code of the failed jobs' event → count
    lost: list[str]  # accepted jobs with no terminal event
    lost_http_status: dict[str, int]  # where the lost jobs are stuck, as GET /v1/generations says
    duplicates: int  # jobs with two or more terminal events
    duplicates_identical: int  # ... all byte-identical
    duplicates_different: list[str]  # ... with different bytes
    http_disagreements: int
    http_examples: list[dict]
    paid: dict[str, Any]
    orphans: list[int]  # client requests that made two or more jobs
    dlq: dict[str, dict[str, int]]  # dlq topic → "ErrorClass: reason" → count
    faults: list[dict[str, Any]]
    crashes: dict[str, list[str]]  # services that died on their own (and were started again): when, last log line
    log_bytes: dict[str, int]

    @property
    def targets_met(self) -> dict[str, bool]:
        """The suite's targets: nothing lost, no differing duplicate, nothing paid twice, no orphan."""
        return {"0 lost": not self.lost, "0 duplicate terminal events with different bytes": not self.duplicates_different,
                "0 paid twice": not self.paid["jobs_paid_twice"], "0 orphan jobs": not self.orphans}

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"targets_met": self.targets_met}


def build_report(*, config: ChaosConfig, run_id: str, elapsed_s: float, load: Load, record: KafkaRecord,
                 disagreements: list[dict], stuck: Counter, paid: Paid, faults: list[FaultRecord],
                 log_bytes: dict[str, int], crashes: dict[str, list[str]]) -> ChaosReport:
    accepted = load.accepted()
    ended = {job: record.terminal[job] for job in accepted if job in record.terminal}
    duplicated = {job: t for job, t in record.terminal.items() if len(t.values) > 1}
    different = sorted(job for job, t in duplicated.items() if len(set(t.values)) > 1)
    return ChaosReport(
        run_id=run_id,
        config={"n": config.n, "rate": config.rate, "seed": config.seed, "faults": config.faults,
                "timings": asdict(config.timings), "window_s": config.window_s, "drain_s": config.drain_s},
        elapsed_s=round(elapsed_s, 1),
        requests=load.n,
        accepted=sum(1 for s in load.submissions if s.final == "accepted"),
        not_accepted=dict(Counter(s.final for s in load.submissions if s.final != "accepted")),
        jobs=len(accepted),
        terminal=len(ended),
        completed=sum(1 for t in ended.values() if t.kind == "completed"),
        failed=sum(1 for t in ended.values() if t.kind == "failed"),
        failed_codes=dict(Counter((t.first.get("error") or {}).get("code", "?")
                                  for t in ended.values() if t.kind == "failed").most_common()),
        lost=sorted(set(accepted) - set(ended)),
        lost_http_status=dict(stuck),
        duplicates=len(duplicated),
        duplicates_identical=len(duplicated) - len(different),
        duplicates_different=different,
        http_disagreements=len(disagreements),
        http_examples=disagreements[:EXAMPLES],
        paid=asdict(paid),
        orphans=orphans(record, load.submissions),
        dlq={topic: dict(reasons.most_common()) for topic, reasons in record.dlq.items()},
        faults=[asdict(f) for f in faults],
        crashes={name: why for name, why in crashes.items() if why},
        log_bytes=log_bytes,
    )


def render(report: ChaosReport) -> str:
    """The table: the figures first, then each fault, the DLQ and the logs."""
    p = report.paid
    rows = [
        ("requests sent", report.requests),
        ("accepted", f"{report.accepted}  (not accepted: {report.not_accepted or 'none'})"),
        ("jobs (distinct ids)", report.jobs),
        ("terminal on Kafka", f"{report.terminal}  ({report.completed} completed, {report.failed} failed"
                              + (f": {report.failed_codes}" if report.failed_codes else "") + ")"),
        ("LOST", f"{len(report.lost)}  {_examples(report.lost)}  HTTP says: {report.lost_http_status or '-'}"),
        ("jobs with 2+ terminal events", f"{report.duplicates}  ({report.duplicates_identical} byte-identical, "
                                         f"{len(report.duplicates_different)} different "
                                         f"{_examples(report.duplicates_different)})"),
        ("HTTP status != Kafka", report.http_disagreements),
        ("paid: charged / settled / paid completions", f"{p['charged']} / {p['settled']} / {p['paid_completions']}"),
        ("jobs paid twice", f"{len(p['jobs_paid_twice'])}  {_examples(p['jobs_paid_twice'])}"),
        ("charged, not settled / settled, not charged", f"{p['charged_not_settled']} / {p['settled_not_charged']}"),
        ("orphan jobs (2+ jobs for a request)", f"{len(report.orphans)}  {_examples(report.orphans)}"),
        ("dead letters", sum(sum(r.values()) for r in report.dlq.values())),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"chaos run {report.run_id}: {report.requests} jobs in {report.elapsed_s:.0f} s", ""]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines += ["", f"{'fault':<26} {'at':>6} {'repaired':>8}  recovery (s until each stage completed records again)"]
    for fault in report.faults:
        recovery = ", ".join(f"{stage} {_seconds(s)}" for stage, s in fault["recovery_s"].items())
        lines.append(f"{fault['name']:<26} {fault['at_s']:6.1f} {_seconds(fault['repaired_s']):>8}  {recovery}; "
                     f"terminal events {_seconds(fault['terminal_resumed_s'])}")
        lines.append(f"{'':<26} {fault['error'] or fault['detail']}")
    dead = [f"  {topic}: {sum(reasons.values())}  " + "; ".join(f"{n}× {why}" for why, n in list(reasons.items())[:5])
            for topic, reasons in report.dlq.items()]
    lines += ["", "dead letters per topic:", *(dead or ["  none"])]
    lines += ["", "services that died on their own (started again):",
              *([f"  {name}: {len(why)}× — {why[0]}" for name, why in report.crashes.items()] or ["  none"])]
    lines += ["", "log sizes: " + ", ".join(f"{name} {size / 1024:.0f} KiB" for name, size in report.log_bytes.items())]
    lines += ["", "targets: " + ", ".join(f"{name} {'✓' if ok else '✗'}" for name, ok in report.targets_met.items())]
    return "\n".join(lines)


def _examples(items: list) -> str:
    return "" if not items else "(" + ", ".join(map(str, items[:EXAMPLES])) + (", …)" if len(items) > EXAMPLES else ")")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
