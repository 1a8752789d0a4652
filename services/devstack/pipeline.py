"""The pipeline's own processes on the local stack: ingest, router, both generators, storage, comparer,
webhooks.

Each runs ``forgeline run <service>`` as a supervised background process (pid file, log,
ownership check, clean stop), exactly what a Kubernetes Deployment runs. ``make demo`` and the
e2e tests start them here; their settings come from the environment given to ``Pipeline``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from services.devstack.errors import DevStackError, Progress, silent
from services.devstack.process import BackgroundProcess, free_ports, log_tail


@dataclass(frozen=True)
class ServiceProcess:
    name: str
    args: tuple[str, ...]
    ready_url: str | None = None  # started processes with one are waited for until it answers 200
    metrics_port_env: str | None = None  # a worker: its /readyz is served on a free port set here


SERVICES: tuple[ServiceProcess, ...] = (
    ServiceProcess("router", ("run", "router"), metrics_port_env="FORGELINE_ROUTER_METRICS_PORT"),
    ServiceProcess("generator-primary", ("run", "generator", "--path", "primary"),
                   metrics_port_env="FORGELINE_GENERATOR_METRICS_PORT"),
    ServiceProcess("generator-fallback", ("run", "generator", "--path", "fallback"),
                   metrics_port_env="FORGELINE_GENERATOR_METRICS_PORT"),
    ServiceProcess("storage", ("run", "storage"), metrics_port_env="FORGELINE_STORAGE_METRICS_PORT"),
    ServiceProcess("comparer", ("run", "comparer"), metrics_port_env="FORGELINE_COMPARER_METRICS_PORT"),
    ServiceProcess("webhooks", ("run", "webhooks"), metrics_port_env="FORGELINE_WEBHOOKS_METRICS_PORT"),
    ServiceProcess("ingest", ("run", "ingest")),
)
SERVICE_NAMES = tuple(s.name for s in SERVICES)

#: A worker that finds its metrics port taken at start-up is started again on another, this often.
PORT_ATTEMPTS = 3
PORT_TAKEN = "Address already in use"


def _answered_by(response: httpx.Response, pid: int | None) -> bool:
    """Whether a /readyz answer came from process ``pid`` (answers that name no pid, ingest's, do)."""
    try:
        said = response.json().get("pid")
    except (ValueError, AttributeError):
        return True
    return said is None or said == pid


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    log_path: Path


class Pipeline:
    """Start, stop and inspect the service processes under ``<state_dir>/pipeline/``."""

    def __init__(self, state_dir: Path, env: Mapping[str, str], *,
                 per_service_env: Mapping[str, Mapping[str, str]] | None = None, ingest_url: str | None = None,
                 extra: Sequence[ServiceProcess] = ()) -> None:
        self._services = (*extra, *SERVICES)  # extras (e.g. fake providers) start first
        self._dir = state_dir / "pipeline"
        self._env = dict(env)
        self._per_service_env = per_service_env or {}
        self.ingest_url = ingest_url
        self._ready_urls: dict[str, str] = {}  # the workers this object started: where their /readyz is

    def process(self, name: str) -> BackgroundProcess:
        names = [s.name for s in self._services]
        if name not in names:
            raise DevStackError(f"no service {name!r}; choose from {', '.join(names)}")
        return BackgroundProcess(name, self._dir)

    def _selected(self, names: Sequence[str] | None) -> list[ServiceProcess]:
        wanted = [s.name for s in self._services] if names is None else list(names)
        for name in wanted:
            self.process(name)  # validates
        return [s for s in self._services if s.name in wanted]

    def start(self, names: Sequence[str] | None = None, progress: Progress = silent,
              timeout_s: float = 90.0) -> list[str]:
        """Start the selected services that are not running, then wait until every one is ready.

        Returns the names started. Raises ``DevStackError`` with the service's log tail when one
        exits or is not ready within ``timeout_s``: a stack with a dead service is no stack. What this
        call started is stopped again before it raises (or is interrupted), so a failed start leaves no
        process behind, not even one whose state folder its caller is about to delete.
        """
        started: list[tuple[ServiceProcess, dict[str, str]]] = []
        try:
            self._start(names, progress, timeout_s, started)
        except BaseException:
            self.stop([service.name for service, _ in started], progress)
            raise
        return [service.name for service, _ in started]

    def _start(self, names: Sequence[str] | None, progress: Progress, timeout_s: float,
               started: list[tuple[ServiceProcess, dict[str, str]]]) -> None:
        """``start``'s work; ``started`` collects each service as it is launched."""
        for service in self._selected(names):
            process = self.process(service.name)
            if process.is_running():
                progress(f"{service.name}: already running (pid {process.pid()})")
                continue
            env = os.environ | self._env | dict(self._per_service_env.get(service.name, {}))
            # Static membership: a service restarted after a kill -9 takes its partitions back at
            # once instead of waiting out the dead process's session (one replica per name here).
            env.setdefault("FORGELINE_KAFKA_GROUP_INSTANCE_ID", service.name)
            service = self._launch(service, process, env, progress)
            started.append((service, env))
            if service.metrics_port_env is None and service.ready_url:
                self._wait_ready(service, progress, timeout_s)  # what the services need (fake providers)
        for service, env in started:
            if service.name == "ingest" and self.ingest_url:
                self.wait_ingest_ready(timeout_s, progress=progress)
            elif service.metrics_port_env:
                self._wait_worker_ready(service, env, progress, timeout_s)

    def _wait_worker_ready(self, service: ServiceProcess, env: dict[str, str], progress: Progress,
                           timeout_s: float) -> None:
        """Wait for a worker; one whose metrics port was taken before it bound it (the free port we
        picked went to another process, an outgoing connection say) is started again on another."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                return self._wait_ready(service, progress, timeout_s)
            except DevStackError:
                if attempt == PORT_ATTEMPTS or PORT_TAKEN not in log_tail(self.process(service.name).log_path):
                    raise
            progress(f"{service.name}: its metrics port was taken; starting it on another")
            service = self._launch(service, self.process(service.name), env, progress)

    def _launch(self, service: ServiceProcess, process: BackgroundProcess, env: dict[str, str],
                progress: Progress) -> ServiceProcess:
        """Start one service (a worker on a fresh metrics port); returns it with its /readyz URL."""
        if service.metrics_port_env:
            (port,) = free_ports(1)
            env[service.metrics_port_env] = str(port)
            service = replace(service, ready_url=f"http://127.0.0.1:{port}/readyz")
            self._ready_urls[service.name] = service.ready_url
        argv = [sys.executable, "-m", "services.cli", *service.args]
        pid = process.start(argv, marker="services.cli", env=env)
        progress(f"{service.name}: started (pid {pid}), log {process.log_path}")
        return service

    def ready_urls(self) -> dict[str, str]:
        """Each worker's ``/readyz`` (with its metrics), for the workers this object started."""
        return dict(self._ready_urls)

    def _wait_ready(self, service: ServiceProcess, progress: Progress, timeout_s: float = 30.0) -> None:
        assert service.ready_url is not None
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.process(service.name).is_running():
                raise DevStackError(f"{service.name} exited. Last lines of its log:\n"
                                    f"{log_tail(self.process(service.name).log_path)}")
            try:
                response = httpx.get(service.ready_url, timeout=2.0)
                # A worker says its pid: a 200 from another process on the port is not this one ready.
                if response.status_code == 200 and _answered_by(response, self.process(service.name).pid()):
                    progress(f"{service.name}: ready")
                    return
                last = f"HTTP {response.status_code}: {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise DevStackError(f"{service.name} not ready after {timeout_s:.0f} s ({last}). Last lines of its log:\n"
                            f"{log_tail(self.process(service.name).log_path)}")

    def wait_ingest_ready(self, timeout_s: float = 60.0, progress: Progress = silent) -> None:
        """Wait until ingest's /readyz answers 200 (Kafka and Redis reachable from it)."""
        assert self.ingest_url is not None, "no ingest_url given to this Pipeline"
        ingest = next(s for s in self._services if s.name == "ingest")
        self._wait_ready(replace(ingest, ready_url=f"{self.ingest_url}/readyz"), progress, timeout_s)

    def stop(self, names: Sequence[str] | None = None, progress: Progress = silent) -> list[str]:
        """Stop the selected services (ingest first, so no new work arrives); returns the names stopped."""
        stopped = []
        for service in reversed(self._selected(names)):
            pid = self.process(service.name).stop(timeout=20, progress=progress)
            if pid is not None:
                progress(f"{service.name}: stopped (pid {pid})")
                stopped.append(service.name)
        return stopped

    def kill(self, name: str) -> int:
        """SIGKILL a service at once, as a crash would (for failure tests); returns its pid."""
        return self.process(name).kill()

    def status(self) -> list[ServiceStatus]:
        return [
            ServiceStatus(s.name, (p := self.process(s.name)).is_running(), p.pid(), p.log_path) for s in self._services
        ]
