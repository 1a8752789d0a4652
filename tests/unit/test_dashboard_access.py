"""Who may open the dashboard, and the figures it shows, without any service."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from services.common.contracts import utcnow
from services.common.jobs import JobView
from services.ingest.dashboard import router
from services.ingest.dashboard.access import COOKIE, session_token
from services.ingest.dashboard.figures import figures
from services.ingest.settings import IngestSettings

OPERATOR_KEY = "op_unit_test_key_0123"


def _client(*, api_keys: dict[str, str], operator_key: str | None) -> TestClient:
    settings = IngestSettings(api_keys=api_keys, operator_key=operator_key)
    app = FastAPI()
    app.include_router(router)
    app.state.deps = SimpleNamespace(settings=settings, auth_enabled=bool(settings.api_keys))
    return TestClient(app, follow_redirects=False)


def test_with_api_keys_and_no_operator_key_the_dashboard_is_off():
    client = _client(api_keys={"studio": "k_studio_12345678"}, operator_key=None)

    answer = client.get("/dashboard/data")

    assert answer.status_code == 403 and "FORGELINE_INGEST_OPERATOR_KEY" in answer.json()["detail"]


def test_a_wrong_key_gets_the_form_again_without_the_key_and_the_right_one_a_cookie_of_its_hmac():
    client = _client(api_keys={"studio": "k_studio_12345678"}, operator_key=OPERATOR_KEY)

    assert client.get("/dashboard").status_code == 401
    wrong = client.post("/dashboard/login", content="key=k_studio_12345678",
                        headers={"content-type": "application/x-www-form-urlencoded"})
    right = client.post("/dashboard/login", content=f"key={OPERATOR_KEY}",
                        headers={"content-type": "application/x-www-form-urlencoded"})

    assert wrong.status_code == 401 and "not the operator key" in wrong.text and "k_studio" not in wrong.text
    assert right.status_code == 303 and right.headers["location"] == "/dashboard"
    cookie = right.headers["set-cookie"]
    assert f"{COOKIE}={session_token(SecretStr(OPERATOR_KEY))}" in cookie and OPERATOR_KEY not in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    client.cookies.clear()
    assert client.get("/dashboard/data", headers={"Authorization": "Bearer k_studio_12345678"}).status_code == 401


def test_an_operator_key_shorter_than_16_characters_is_refused_without_quoting_it():
    try:
        IngestSettings(operator_key="short-key")
    except ValueError as exc:
        assert "at least 16 characters" in str(exc) and "short-key" not in str(exc)
    else:
        raise AssertionError("a short operator key was accepted")


def test_figures_come_from_the_status_and_the_latest_jobs():
    now = utcnow()
    timings = {"accepted_at": (now - timedelta(seconds=3)).isoformat(), "routed_at": (now - timedelta(seconds=2.5)).isoformat(),
               "generated_at": (now - timedelta(seconds=1)).isoformat(), "stored_at": (now - timedelta(seconds=0.5)).isoformat(),
               "completed_at": now.isoformat()}
    view = JobView(job_id="j1", status="completed", route="primary", route_reason="primary depth 3 < 50",
                   provider="space-a", url="https://cdn/x.png", timings=timings)
    status = {
        "queues": {"primary": {"depth": 7}, "fallback": {"depth": 0}},
        "routes": {"primary": 3, "fallback": 1, "fallback_share": 0.25},
        "cache": {"hit_local": 1, "hit_redis": 1, "miss": 2, "hit_rate": 0.5},
        "budget": {"cap": "$10.00", "spent": "$7.00", "reserved": "$1.00", "remaining": "$2.00", "tenants": [
            {"tenant": "studio-a", "spent": "$1.00", "reserved": "$0.00", "cap": "$2.00", "remaining": "$1.00"},
            {"tenant": "studio-b", "spent": "$5.00", "reserved": "$1.00", "cap": None, "remaining": None},
            {"tenant": "studio-c", "spent": "$0.50", "reserved": "$0.00", "cap": None, "remaining": None},
            {"tenant": "studio-d", "spent": "$0.50", "reserved": "$0.00", "cap": "$1.00", "remaining": "$0.50"}]},
        "providers": [{"name": "space-a", "paths": ["primary"], "breaker": {"state": "open"},
                       "keys": [{"state": "healthy"}, {"state": "cooling_down"}]}],
    }

    shown = figures(status, [view], {"t.generation.generated.dlq": 2, "t.generation.requested.dlq": 0}, now)

    assert shown["queue.primary"] == "depth 7" and shown["queue.fallback"] == "depth 0"
    assert shown["route.split"] == "primary 3 · fallback 1 (25 % paid)"
    assert shown["route.reasons"] == "latest: primary depth 3 < 50"
    assert shown["cache"] == "hit rate 50 % (2 of 4)"
    assert shown["budget"] == "$7.00 spent + $1.00 held of $10.00 (80 %)"
    # The three that spend most, each against its own cap when it has one; the rest counted.
    assert shown["budget.tenants"] == "tenants: studio-b $5.00, studio-a $1.00 of $2.00, studio-c $0.50 +1 more"
    assert shown["rate.primary"] == "0.02 img/s · generate p50 1.50 s · p95 1.50 s"
    assert shown["keys.primary"] == "keys 1 cooling_down, 1 healthy · breaker open: space-a"
    assert shown["latency.total"] == "end to end p50 3.00 s · p95 3.00 s"
    assert shown["dlq"] == "2 dead letters: t.generation.generated.dlq 2"
