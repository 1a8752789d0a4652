"""The faults a chaos run injects, and when: each one breaks a piece of the local stack and mends it.

A fault is a blocking function (it signals processes and waits for them) run in a thread; it
returns when what it broke runs again, with the moment of the repair, which recovery is
measured from. Faults on the same piece never overlap (a broker is not killed while it restarts).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from services.devstack.component import Component
from services.devstack.pipeline import Pipeline
from services.devstack.process import log_tail

#: Services killed with SIGKILL and started again, one fault each.
KILLED_SERVICES: tuple[str, ...] = ("router", "generator-primary", "generator-fallback", "storage", "comparer",
                                    "ingest")
FAULT_NAMES: tuple[str, ...] = (
    *(f"kill:{name}" for name in KILLED_SERVICES),
    "broker:sigterm", "broker:sigkill", "redis:restart", "s3:outage", "providers:storm",
)
#: On a three-broker cluster ``broker:*`` acts on one broker of three (a leader election, what
#: production sees); this one restarts all of them at once.
CLUSTER_FAULTS: tuple[str, ...] = ("brokers:restart",)


def default_faults(brokers: int) -> list[str]:
    """Every fault once; on a cluster, also the restart of every broker."""
    return [*FAULT_NAMES, *(CLUSTER_FAULTS if brokers > 1 else ())]
#: The fakes a storm hits: both paths' providers (the comparer's VLM has the perceptual fallback anyway).
STORMED_FAKES: tuple[str, ...] = ("gradio", "replicate", "siliconflow")


@dataclass(frozen=True)
class Timings:
    """How long each fault lasts; the e2e test compresses them."""

    downtime_s: float = 2.0  # between a kill and the restart, as a supervisor's restart delay
    s3_outage_s: float = 30.0
    storm_s: float = 30.0
    provider_hang_s: float = 10.0  # a storm's "timeout": the fake holds the request this long, then a 503
    storm_rates: dict[str, float] = field(default_factory=lambda: {"429": 0.30, "500": 0.05, "503": 0.05,
                                                                    "timeout": 0.05})


@dataclass
class FaultRecord:
    """What one fault did, as the report shows it. Times are seconds since the run began."""

    name: str
    at_s: float  # when it was scheduled
    began_s: float | None = None
    repaired_s: float | None = None  # the restart (or SIGCONT, or the storm's end): recovery counts from here
    detail: str = ""
    error: str | None = None
    recovery_s: dict[str, float | None] = field(default_factory=dict)  # stage → seconds until it moved again
    terminal_resumed_s: float | None = None  # first terminal event on Kafka after the repair


@dataclass(frozen=True)
class Targets:
    """What faults act on: the stack's components, the pipeline's processes, the fakes' addresses."""

    components: dict[str, Component]  # "kafka", "redis", "s3"
    pipeline: Pipeline
    fake_urls: dict[str, str]
    timings: Timings
    seed: int
    restart_brokers: Callable[[], None] | None = None  # stop every broker, then start them together


def schedule(names: list[str], window_s: float, seed: int) -> list[FaultRecord]:
    """Each named fault at a seeded random moment within the first ``window_s`` seconds, in time order."""
    known = (*FAULT_NAMES, *CLUSTER_FAULTS)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    draw = random.Random(seed)
    # Not at the very start (let jobs flow first) and not so late that the faults run after the load.
    return sorted((FaultRecord(name, round(draw.uniform(0.1, 0.8) * window_s, 2)) for name in names),
                  key=lambda record: record.at_s)


def short_error(exc: BaseException) -> str:
    """The error's first line and the last line of the log tail it quotes: enough to see why."""
    lines = [line.strip(" │") for line in str(exc).splitlines() if line.strip(" │╰─╯")]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}" + (f" … {lines[-1]}" if len(lines) > 1 else "")


def piece(name: str) -> str:
    """What a fault breaks; two faults of one piece run one after the other."""
    return "kafka" if name.startswith(("broker:", "brokers:")) else name


class Injector:
    """Runs faults against ``targets``; ``clock()`` is seconds since the run began."""

    def __init__(self, targets: Targets, clock: Callable[[], float]) -> None:
        self.targets = targets
        self.clock = clock
        self._locks: dict[str, threading.Lock] = {}

        self.busy: set[str] = set()  # services a fault is acting on: the supervisor leaves them alone

    def run(self, record: FaultRecord) -> FaultRecord:
        """Break and mend; an error (a restart that failed) is recorded, not raised: the report shows it."""
        target = piece(record.name)
        with self._locks.setdefault(target, threading.Lock()):
            self.busy.add(target.removeprefix("kill:"))
            record.began_s = self.clock()
            try:
                record.detail = self._inject(record)
            except Exception as exc:  # noqa: BLE001 — any failure of the repair is a finding of the run
                record.error = short_error(exc)
            finally:
                self.busy.discard(target.removeprefix("kill:"))
        return record

    def _inject(self, record: FaultRecord) -> str:
        kind, _, what = record.name.partition(":")
        t = self.targets.timings
        if kind == "kill":
            pid = self.targets.pipeline.kill(what)
            time.sleep(t.downtime_s)
            record.repaired_s = self.clock()
            self.targets.pipeline.start([what])
            return f"SIGKILL pid {pid}; started again after {t.downtime_s:g} s"
        if kind == "broker":
            return self._restart(record, self.targets.components["kafka"], hard=what == "sigkill")
        if kind == "brokers":
            if self.targets.restart_brokers is None:
                raise ValueError("brokers:restart needs a cluster (--brokers 3)")
            started = time.monotonic()
            self.targets.restart_brokers()
            record.repaired_s = self.clock()
            return f"every broker stopped (SIGTERM) and started again, {time.monotonic() - started:.0f} s"
        if kind == "redis":
            return self._restart(record, self.targets.components["redis"], hard=False)
        if kind == "s3":
            process = self.targets.components["s3"].process
            pid = process.signal(signal.SIGSTOP)
            try:
                time.sleep(t.s3_outage_s)
            finally:
                process.signal(signal.SIGCONT)
                record.repaired_s = self.clock()
            return f"SIGSTOP pid {pid} for {t.s3_outage_s:g} s, then SIGCONT"
        return self._storm(record)

    def _restart(self, record: FaultRecord, component: Component, *, hard: bool) -> str:
        if hard:
            pid = component.process.kill()
        else:
            pid = component.process.pid()
            component.stop()
        time.sleep(self.targets.timings.downtime_s)
        record.repaired_s = self.clock()
        component.start()
        how = "SIGKILL" if hard else "SIGTERM"
        return f"{how} pid {pid}; started again after {self.targets.timings.downtime_s:g} s"

    def _storm(self, record: FaultRecord) -> str:
        t = self.targets.timings
        storm = {"fail_rates": t.storm_rates, "fail_seed": self.targets.seed, "retry_after_s": 1,
                 "timeout_s": t.provider_hang_s}
        try:
            for fake in STORMED_FAKES:
                httpx.post(f"{self.targets.fake_urls[fake]}/_fake/knobs", json=storm, timeout=5).raise_for_status()
            time.sleep(t.storm_s)
        finally:
            for fake in STORMED_FAKES:
                httpx.post(f"{self.targets.fake_urls[fake]}/_fake/knobs", json={"fail_rates": {}}, timeout=5)
            record.repaired_s = self.clock()
        rates = ", ".join(f"{share:.0%} {mode}" for mode, share in t.storm_rates.items())
        return f"{rates} from {', '.join(STORMED_FAKES)} for {t.storm_s:g} s"


class Supervisor:
    """Starts again any service that died on its own, as Kubernetes would (with a growing back-off).

    A service that exits because a dependency was down is a finding (``crashes``), but it must not
    end the run: the jobs it leaves behind are the pipeline's to finish once it is back.
    """

    def __init__(self, pipeline: Pipeline, injector: Injector, names: tuple[str, ...]) -> None:
        self.pipeline, self.injector, self.names = pipeline, injector, names
        self.crashes: dict[str, list[str]] = {name: [] for name in names}  # service → why, one entry per crash

    def watch_once(self) -> None:
        """One look at every service; blocking (a restart waits until the service is ready, or fails)."""
        for name in self.names:
            if name in self.injector.busy or self.pipeline.process(name).is_running():
                continue
            self.crashes[name].append(f"{self.injector.clock():.1f}s: " + _last_line(self.pipeline, name))
            try:
                self.pipeline.start([name])
            except Exception:  # noqa: BLE001 — it died again; the next look starts it once more
                time.sleep(min(10.0, 2.0 ** len(self.crashes[name])))


def _last_line(pipeline: Pipeline, name: str) -> str:
    lines = [line.strip(" │") for line in log_tail(pipeline.process(name).log_path, 40).splitlines()
             if line.strip(" │╰─╯")]
    errors = [line for line in lines if "Error" in line or "Exception" in line]  # the raise, not its wrapping
    return (errors or lines or ["(empty log)"])[-1][:200]
