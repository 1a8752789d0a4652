"""schemathesis against the real ingest of a running pipeline: every check and phase, auth off and on.

The run is bounded (a fixed seed, ``MAX_EXAMPLES`` per operation) and fails the test on any 5xx,
any response that does not match the OpenAPI document, any other check failure, and any
unhandled exception in ingest's log. Neither the comparer nor the webhooks service runs: nothing
schemathesis sends can make a process fetch a URL (nothing may leave loopback); comparisons stay
queued.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from services.devstack.pipeline import SERVICE_NAMES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SEED = 20251202
MAX_EXAMPLES = 8
CONFIG = Path(__file__).with_name("schemathesis.toml")
ROOT = Path(__file__).parents[2]  # the hooks module is imported from here
# Nor the webhooks service: nothing may try to deliver to a URL schemathesis made up.
WITHOUT_COMPARER = [name for name in SERVICE_NAMES if name not in ("comparer", "webhooks")]
# No comparer runs, so a ?wait= would wait its whole cap: keep the cap short.
INGEST_ENV = {"FORGELINE_INGEST_SSE_KEEPALIVE_S": "1", "FORGELINE_INGEST_COMPARISON_WAIT_MAX_S": "0.2"}
EXAMPLE_TENANT = "studio-alpha"  # the X-Forgeline-Tenant header's documented example
KEYS = {"studio-a": "sk-schemathesis-a-4f1c9a", "studio-b": "sk-schemathesis-b-77d0e2"}
# What an unhandled exception leaves in a log (uvicorn's and the ASGI app's own words).
CRASH_MARKS = ("Traceback (most recent call last)", "Exception in ASGI application")


async def schemathesis(base_url: str, report: Path, *headers: str) -> tuple[int, str, dict]:
    """Run the schemathesis CLI on ``base_url``; its exit code, output and JSON report."""
    args = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color", "run",
            f"{base_url}/openapi.json", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES),
            "--report", "json", "--report-json-path", str(report)]
    for header in headers:
        args += ["--header", header]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT, cwd=ROOT, env=env)
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    return process.returncode or 0, text, json.loads(report.read_text()) if report.exists() else {}


def assert_clean(code: int, output: str, log: str, label: str) -> None:
    print(f"\n----- schemathesis ({label}) -----\n{output}")
    assert code == 0, f"schemathesis found problems ({label}); its summary is printed above"
    crashes = [mark for mark in CRASH_MARKS if mark in log]
    assert not crashes, f"ingest logged an unhandled exception ({label}):\n{log[-4000:]}"


async def signing_secret(base_url: str, headers: dict[str, str]) -> None:
    """The tenant's webhook signing secret, made as its integration would first: the documented
    examples give a job a webhook_url, which needs one."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        response = await http.post("/v1/webhooks/secret", headers=headers)
    assert response.status_code == 201, response.text


async def test_schemathesis_finds_nothing_without_auth(running_pipeline, tmp_path: Path):
    async with running_pipeline(services=WITHOUT_COMPARER, env=INGEST_ENV) as p:
        await signing_secret(p.ingest_url, {"X-Forgeline-Tenant": EXAMPLE_TENANT})
        code, output, _ = await schemathesis(p.ingest_url, tmp_path / "report.json")
        log = p.pipeline.process("ingest").log_path.read_text(errors="replace")

    assert_clean(code, output, log, "auth off")


async def test_schemathesis_finds_nothing_with_two_tenants(running_pipeline, tmp_path: Path):
    env = INGEST_ENV | {"FORGELINE_INGEST_API_KEYS": json.dumps(KEYS)}
    async with running_pipeline(services=WITHOUT_COMPARER, env=env) as p:
        for key in KEYS.values():
            await signing_secret(p.ingest_url, {"Authorization": f"Bearer {key}"})
        runs = [(tenant, await schemathesis(p.ingest_url, tmp_path / f"{tenant}.json",
                                            f"Authorization: Bearer {key}"))
                for tenant, key in KEYS.items()]
        log = p.pipeline.process("ingest").log_path.read_text(errors="replace")

    for tenant, (code, output, _) in runs:
        assert_clean(code, output, log, f"auth on, {tenant}")
