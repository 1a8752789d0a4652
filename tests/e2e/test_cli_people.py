"""``forgeline submit --wait``, ``status`` and ``compare`` against the real pipeline, as a person runs them."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from typer.testing import CliRunner

from services.cli import app

pytestmark = pytest.mark.e2e


async def _forgeline(*args: str):
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), catch_exceptions=False)


async def test_submit_wait_status_and_compare(running_pipeline, tmp_path) -> None:
    async with running_pipeline(services=["router", "generator-primary", "storage", "comparer", "ingest"]) as p:
        submitted = await _forgeline("submit", "flaming obsidian greatsword", "--wait", "--width", "128",
                                     "--height", "128", "--seed", "7", "--url", p.ingest_url)
        url = submitted.stdout.strip().splitlines()[-1]
        job_id = submitted.output.split("job ", 1)[1].split(":", 1)[0].strip()
        shown = await _forgeline("status", job_id, "--url", p.ingest_url)
        async with httpx.AsyncClient() as http:
            (tmp_path / "target.png").write_bytes((await http.get(url)).content)
        compared = await _forgeline("compare", str(tmp_path / "target.png"), job_id, "--url", p.ingest_url)
        refused = await _forgeline("submit", "x", "--width", "100", "--url", p.ingest_url)
        unknown = await _forgeline("status", "0123456789abcdef", "--url", p.ingest_url)

    assert submitted.exit_code == 0, submitted.output
    assert url.startswith("http") and url.endswith(".png")
    stages = [word for word in ("queued", "routed → primary (", "generating", "stored", "completed")
              if word in submitted.output]
    assert stages == ["queued", "routed → primary (", "generating", "stored", "completed"]
    assert submitted.output.index("routed") < submitted.output.index("generating") < submitted.output.index("stored")
    assert shown.exit_code == 0 and shown.stdout.strip() == url and "completed" in shown.output
    assert compared.exit_code == 0, compared.output
    assert float(compared.stdout.strip().splitlines()[-1]) >= 85, "an image scored against itself is Excellent"
    assert "Excellent" in compared.output and "perceptual" in compared.output
    assert refused.exit_code == 1 and "width" in refused.output and "multiple of 8" in refused.output
    assert unknown.exit_code == 1 and "404" in unknown.output
