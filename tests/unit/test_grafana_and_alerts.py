"""The Grafana dashboard and the Prometheus alert rules, checked by Debian's ``promtool``.

``promtool`` (package ``prometheus``) is installed with apt-get when missing; if it cannot be,
the tests fail saying so. The rules pass ``promtool check rules`` and their own ``promtool test
rules`` scenarios; every Grafana query parses as PromQL, and every metric either names is one
the services register.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from services.devstack.errors import DevStackError
from services.devstack.host import ensure_command

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "infra/prometheus/forgeline-rules.yml"
RULE_TESTS = ROOT / "infra/prometheus/forgeline-rules.test.yml"
DASHBOARD = ROOT / "infra/grafana/forgeline.json"
# Importing these registers every metric the services export.
_METRIC_MODULES = ("services.common.consumer", "services.common.budget", "services.common.cache",
                   "services.common.breaker", "services.common.health", "services.common.keypool",
                   "services.providers.failover", "services.router.depth", "services.router.handlers",
                   "services.ingest.middleware", "services.ingest.handlers", "services.comparer.service")


@pytest.fixture(scope="module")
def promtool() -> str:
    try:
        return ensure_command("promtool", "prometheus", progress=lambda m: print(f"[promtool] {m}", flush=True))
    except DevStackError as exc:
        pytest.fail(f"promtool is needed to check the alert rules and could not be installed: {exc}", pytrace=False)


def _run(promtool: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _exported_names() -> set[str]:
    for module in _METRIC_MODULES:
        importlib.import_module(module)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, ("",))}


def _panel_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_rules_pass_promtool_check(promtool: str):
    assert "SUCCESS: 6 rules found" in _run(promtool, "check", "rules", RULES.name, cwd=RULES.parent)


def test_each_alert_fires_on_its_scenario_and_only_then(promtool: str):
    _run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULES.parent)


def test_the_alerts_the_operators_asked_for_are_there():
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert {rule["alert"] for rule in rules} == {
        "ForgelineDeadLettersGrowing", "ForgelineBreakerOpen", "ForgelineBudgetAt80Percent",
        "ForgelinePrimaryLagOverDeadline", "ForgelineServiceNotReady", "ForgelineServiceDown"}


def test_every_grafana_query_is_valid_promql(promtool: str, tmp_path: Path):
    exprs = _panel_exprs()
    recording = {"groups": [{"name": "grafana", "rules": [
        {"record": f"grafana:panel_query_{index}", "expr": expr} for index, expr in enumerate(exprs)]}]}
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(recording))

    assert f"SUCCESS: {len(exprs)} rules found" in _run(promtool, "check", "rules", "panels.yml", cwd=tmp_path)


def test_dashboard_and_alerts_name_only_metrics_the_services_export():
    exported = _exported_names()
    used = set(re.findall(r"\bforgeline_[a-z_]+\b", " ".join(_panel_exprs()) + RULES.read_text()))
    assert used, "no Forgeline metric found in the dashboard or the rules"
    assert used - exported == set()


def test_the_dashboard_shows_the_figures_of_the_page():
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    for figure in ("Primary queue depth", "Primary service rate", "Route split", "Route reasons", "Cache hit rate",
                   "Paid spend against the monthly cap", "API keys by state", "Open circuit breakers",
                   "Dead letters (last hour)", "Stage time p50 / p95 (per consumer group)"):
        assert figure in titles
