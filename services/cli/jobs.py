"""``forgeline submit | status | compare``: the HTTP API for people at a terminal.

They talk to ingest like any game backend (``services.client``): ``--url`` (``FORGELINE_INGEST_URL``,
else ``FORGELINE_INGEST_HOST``/``_PORT`` as ``forgeline dev env`` sets them) and ``--api-key``
(``FORGELINE_API_KEY``) when the API runs with keys.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from services.cli._console import console, fail
from services.client import TERMINAL, ForgelineClient, ForgelineError, JobFailed


def default_url() -> str:
    host = os.environ.get("FORGELINE_INGEST_HOST", "127.0.0.1")
    return f"http://{host}:{os.environ.get('FORGELINE_INGEST_PORT', '8080')}"


Url = Annotated[str | None, typer.Option(
    "--url", envvar="FORGELINE_INGEST_URL", show_default=False,
    help="The ingest API (default: http://$FORGELINE_INGEST_HOST:$FORGELINE_INGEST_PORT, else 127.0.0.1:8080).")]
ApiKey = Annotated[str | None, typer.Option("--api-key", envvar="FORGELINE_API_KEY", show_default=False,
                                            help="Your API key, when the API runs with keys.")]


def _client(url: str | None, api_key: str | None) -> ForgelineClient:
    return ForgelineClient(url or default_url(), api_key=api_key, timeout_s=60.0)


def _run(work: Any) -> Any:
    try:
        return asyncio.run(work)
    except JobFailed as exc:
        raise fail(str(exc), "`forgeline status <job>` shows the whole job") from None
    except ForgelineError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot reach the API ({type(exc).__name__})", "check --url, or start it: forgeline dev up "
                                                                   "--pipeline") from None


def _stage(view: dict[str, Any]) -> str:
    """One status change in words: ``routed → primary (depth 3 < 50)``, ``generating on procedural``."""
    status = view["status"]
    if status == "routed" and view.get("coalesced_with"):
        return f"waiting on job {view['coalesced_with']} (the same request, already in flight)"
    if status == "routed" and view.get("route"):
        return f"routed → {view['route']} ({view.get('route_reason') or 'no reason recorded'})"
    if status == "generating" and view.get("provider"):
        return f"generating on {view['provider']}"
    if status == "failed":
        return f"failed: {(view.get('error') or {}).get('message', 'no reason given')}"
    return status


def _queue_line(view: dict[str, Any]) -> str:
    """``3 ahead on primary; starts in about 40 s (12:04:31 UTC)``: where a waiting job stands."""
    line = f"{view['queue_position']} ahead on {view.get('route') or 'its path'}"
    if view.get("estimated_start_s") is None:
        return line + "; no start estimate yet (the path's rate is not measured)"
    at = str(view.get("estimated_start_at") or "")[11:19]
    return line + f"; starts in about {view['estimated_start_s']:.0f} s" + (f" ({at} UTC)" if at else "")


def _progress(lines: list[str], started: float) -> Table:
    table = Table.grid(padding=(0, 2))
    for line in lines:
        table.add_row(line)
    table.add_row(f"[dim]{time.monotonic() - started:5.1f} s[/]")
    return table


async def _submit(url: str | None, api_key: str | None, prompt: str, wait: bool, options: dict[str, Any]) -> dict[str, Any]:
    async with _client(url, api_key) as forgeline:
        submitted = await forgeline.submit(prompt, **options)
        console.print(f"job [bold]{submitted.job_id}[/]: {submitted.status}"
                      + (" (from the cache)" if submitted.cached else ""))
        if not wait or submitted.status in TERMINAL:
            return submitted.raw
        started, lines, last = time.monotonic(), [], submitted.raw
        with Live(_progress(lines, started), console=console, transient=False, refresh_per_second=8) as live:
            async for view in forgeline.events(submitted.job_id):
                last = view
                line = f"{time.monotonic() - started:5.1f} s  {_stage(view)}"
                if not lines or not lines[-1].endswith(_stage(view)):
                    lines.append(line)
                live.update(_progress(lines, started))
                if view["status"] in TERMINAL:
                    break
        return last


def submit(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it ends, showing each stage.")] = False,
    width: Annotated[int, typer.Option(help="Pixels, 64–2048, a multiple of 8.")] = 512,
    height: Annotated[int, typer.Option(help="Pixels, 64–2048, a multiple of 8.")] = 512,
    seed: Annotated[int | None, typer.Option(help="Same seed, same image.")] = None,
    style: Annotated[str | None, typer.Option(help="e.g. pixel-art, painterly.")] = None,
    negative: Annotated[str | None, typer.Option("--negative", help="What to avoid.")] = None,
    priority: Annotated[str, typer.Option(help="standard or high.")] = "standard",
    webhook_url: Annotated[str | None, typer.Option(help="POST the result here, signed (Standard Webhooks).")] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Ask for an image; with --wait, follow it to its URL."""
    options = {"width": width, "height": height, "seed": seed, "style": style, "negative_prompt": negative,
               "priority": priority, "webhook_url": webhook_url}
    job = _run(_submit(url, api_key, prompt, wait, {k: v for k, v in options.items() if v is not None}))
    if job.get("status") == "failed":
        raise fail(_stage(job), f"`forgeline status {job['job_id']}` shows the whole job")
    if job.get("url"):
        print(job["url"])  # stdout: the one thing a script wants
    else:
        console.print(f"follow it: forgeline status {job['job_id']}")


def status(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """A job's status, route and why, provider, timings, image URL or error, and its webhook deliveries."""
    async def read() -> dict[str, Any]:
        async with _client(url, api_key) as forgeline:
            return (await forgeline.status(job_id)).raw

    job = _run(read())
    table = Table(show_header=False, box=None, padding=(0, 2))
    for name in ("job_id", "status", "route", "route_reason", "coalesced_with", "provider", "cached", "placeholder"):
        if job.get(name) not in (None, ""):
            table.add_row(name, str(job[name]))
    if job.get("queue_position") is not None:
        table.add_row("queue", _queue_line(job))
    if job.get("error"):
        table.add_row("error", f"{job['error'].get('code')}: {job['error'].get('message')}")
    for stage, at in (job.get("timings") or {}).items():
        table.add_row(stage.removesuffix("_at"), str(at))
    for delivery in job.get("deliveries") or []:
        attempts = ", ".join(f"{a['status'] or a['error']} in {a['latency_ms']:.0f} ms" for a in delivery["attempts"])
        table.add_row(f"webhook {delivery['delivery_id']}", f"{delivery['state']} ({attempts or 'not tried yet'})")
    console.print(table)
    if job.get("url"):
        print(job["url"])


def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Kept on the job and its terminal event.")] = None,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Cancel a job: a queued one never reaches a provider, a running paid prediction is cancelled there."""
    async def send() -> dict[str, Any]:
        async with _client(url, api_key) as forgeline:
            return (await forgeline.cancel(job_id, reason)).raw

    job = _run(send())
    console.print(f"job {job['job_id']}: {job['status']} ({(job.get('error') or {}).get('message', '')})")


def _image_ref(value: str) -> str:
    """A file becomes a data: URL; a URL or a job id goes as it is."""
    path = Path(value)
    if value.startswith(("https://", "http://", "data:")) or not path.exists():
        return value
    kind = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def compare(
    target: Annotated[str, typer.Argument(help="The image you wanted: a file, or an https URL.")],
    generated: Annotated[str, typer.Argument(help="The image to score: a job id, a file, or an https URL.")],
    prompt: Annotated[str | None, typer.Option(help="The prompt it was made from (default: the job's).")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the score.")] = 60.0,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Score GENERATED against TARGET (0–100, band, differences, how to change the prompt)."""
    async def run() -> dict[str, Any]:
        async with _client(url, api_key) as forgeline:
            original = prompt
            if original is None and not Path(generated).exists() and "://" not in generated:
                result = (await forgeline.status(generated)).raw.get("result") or {}
                original = (result.get("spec") or {}).get("prompt")
            if not original:
                raise ForgelineError("give the prompt the image was made from with --prompt")
            return await forgeline.compare(_image_ref(target), _image_ref(generated), original, wait_s=wait)

    view = _run(run())
    result = view["result"]
    console.print(f"score [bold]{result['score']:.1f}[/] [{result['band_color']}]{result['band']}[/] "
                  f"({result['method']}{', ' + result['fallback_reason'] if result.get('fallback_reason') else ''})")
    for heading, items in (("differences", result["differences"]), ("improvements", result["improvements"])):
        if items:
            console.print(f"{heading}:")
            for item in items:
                console.print(f"  • {item}")
    print(f"{result['score']:.1f}")
