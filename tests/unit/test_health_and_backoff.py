"""Readiness reporting for worker probes, and the start-up wait that never gives up on a transient error."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import httpx
import pytest

from services.common.backoff import Backoff, RateLimitedLog, RepeatFilter, until_ready
from services.common.health import Readiness, health_app, start_health_server
from services.devstack.process import free_ports


def test_readiness_is_ready_only_when_every_check_is() -> None:
    readiness = Readiness("kafka", "redis")
    assert not readiness.ready
    assert readiness.report() == {"kafka": "starting", "redis": "starting"}
    readiness.set("kafka", True)
    assert not readiness.ready
    readiness.set("redis", True)
    assert readiness.ready
    readiness.set("redis", False, "ConnectionError")
    assert readiness.report() == {"kafka": "ok", "redis": "ConnectionError"}
    assert not Readiness().ready  # nothing known yet is not ready


def _call(app, path: str) -> tuple[str, bytes]:
    seen: list[str] = []
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, lambda status, headers: seen.append(status)))
    return seen[0], body


def test_health_app_answers_probes_and_metrics() -> None:
    readiness = Readiness("kafka")
    app = health_app(readiness)
    assert _call(app, "/healthz") == ("200 OK", b"ok\n")
    status, body = _call(app, "/readyz")
    assert status.startswith("503") and json.loads(body) == {"ready": False, "checks": {"kafka": "starting"},
                                                            "pid": os.getpid()}
    readiness.set("kafka", True)
    status, body = _call(app, "/readyz")
    assert status == "200 OK" and json.loads(body)["checks"] == {"kafka": "ok"}
    status, body = _call(app, "/metrics")
    assert status == "200 OK" and b'forgeline_ready{check="kafka"} 1.0' in body


def test_health_server_serves_on_its_port() -> None:
    (port,) = free_ports(1)
    readiness = Readiness("kafka")
    server = start_health_server(port, readiness, host="127.0.0.1")
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 503
        readiness.set("kafka", True)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        server.shutdown()


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    backoff = Backoff(base_s=0.5, max_s=4.0)
    for attempt, full in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)):
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(full * 0.5 <= d <= full for d in delays), (attempt, min(delays), max(delays))


async def test_until_ready_retries_transient_errors_and_logs_a_bounded_number_of_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    failures = iter([ConnectionError("refused")] * 30)

    async def operation() -> str:
        error = next(failures, None)
        if error is not None:
            raise error
        return "depth"

    logger = logging.getLogger("test.until_ready")
    with caplog.at_level(logging.INFO, logger="test.until_ready"):
        result = await until_ready(operation, what="queue depth", logger=logger,
                                   backoff=Backoff(base_s=0.0001, max_s=0.0001), log_every_s=60)
    assert result == "depth"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "queue depth: not ready yet (attempt 1)" in warnings[0].getMessage()
    assert any("ready after 31 attempt(s)" in r.getMessage() for r in caplog.records)


async def test_until_ready_lets_other_errors_through() -> None:
    async def operation() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await asyncio.wait_for(until_ready(operation, what="x", logger=logging.getLogger("t"),
                                           retry_on=(ConnectionError,)), 5)


def test_rate_limited_log_counts_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    warn = RateLimitedLog(logging.getLogger("test.rate"), every_s=30, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.rate"):
        for second in range(0, 65):
            now[0] = float(second)
            warn.warning("broker down")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["broker down", "broker down (29 similar message(s) held back)",
                        "broker down (29 similar message(s) held back)"]


def test_repeat_filter_keeps_one_line_per_message_per_interval() -> None:
    """A broker down for a minute: aiokafka's reconnect lines shrink to one per 30 s, others pass."""
    now = [0.0]
    repeat = RepeatFilter(("aiokafka",), every_s=30, clock=lambda: now[0])

    def record(name: str, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    kept = []
    for tick in range(600):  # ten reconnect attempts a second for a minute
        now[0] = tick / 10
        line = record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "refused")
        if repeat.filter(line):
            kept.append(line.getMessage())
    assert kept == ["Unable connect to node with id 1: refused",
                    "Unable connect to node with id 1: refused (299 similar message(s) held back)"]
    assert all(repeat.filter(record("services.router", "routed %s", n)) for n in range(100))
