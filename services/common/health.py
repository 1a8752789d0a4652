"""A worker's health endpoint: ``/healthz`` (alive), ``/readyz`` (ready to do its work), ``/metrics``.

Workers have no API of their own, so their metrics port also answers the probes: Kubernetes'
readiness probe and ``forgeline dev up``, which waits for every service to be ready and fails
with its log when one is not. A service marks each thing it needs ready or not, with why
(``readiness.set("kafka", False, "coordinator not available")``); ``/readyz`` answers 200 when
every one is ready, else 503 with the reasons as JSON. ``forgeline_ready`` says the same to
Prometheus.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Gauge, make_wsgi_app

log = logging.getLogger(__name__)

READY = Gauge("forgeline_ready", "1 when the service is ready to do its work, by what it needs.", ["check"])

StartResponse = Callable[..., object]


class Readiness:
    """What a process needs, each ready or not (with a reason); shared with the probe's thread."""

    def __init__(self, *pending: str) -> None:
        self._checks: dict[str, str] = {}
        self._lock = threading.Lock()
        for name in pending:
            self.set(name, False, "starting")

    def set(self, name: str, ready: bool, reason: str = "") -> None:
        with self._lock:
            self._checks[name] = "ok" if ready else (reason or "not ready")
        READY.labels(name).set(1 if ready else 0)

    def report(self) -> dict[str, str]:
        with self._lock:
            return dict(self._checks)

    @property
    def ready(self) -> bool:
        report = self.report()
        return bool(report) and all(value == "ok" for value in report.values())


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 — the stdlib's name
        pass  # probes every few seconds would drown the service's own log


def health_app(readiness: Readiness) -> Callable[[dict, StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            report = readiness.report()
            status = "200 OK" if readiness.ready else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            # The pid lets a launcher tell its own process from another one on the same port.
            return [json.dumps({"ready": readiness.ready, "checks": report, "pid": os.getpid()}).encode()]
        return metrics(environ, start_response)

    return app


def start_health_server(port: int, readiness: Readiness, host: str = "0.0.0.0") -> WSGIServer:  # noqa: S104 — probes come from the kubelet
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` on ``port`` from a daemon thread."""
    server = make_server(host, port, health_app(readiness), server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    log.info("health and metrics on :%d (/healthz, /readyz, /metrics)", port)
    return server
