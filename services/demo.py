"""`forgeline demo` (what `make demo` runs): the pipeline end to end on the local stack.

1. Start the stack (Kafka, Redis, S3) and the seven services as supervised background processes,
   with a deliberately slow, single-slot primary path (see ``DevStackSettings``).
2. Submit sample prompts at once over HTTP, like a game backend would.
3. Follow every job until it finishes, with a live progress table.
4. Print job, route, provider, latency and URL; check that each URL serves the very image
   (same SHA-256 as the completed event, a PNG).
5. Generate with a reference image ("the concept art") and show the comparison the result
   carries; then compare another job's image against the same target through /v1/comparisons.
The stack is left running for you to explore; ``make down`` stops it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import time
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from services import devstack
from services.client import ForgelineClient, ForgelineError, JobResult
from services.common.contracts import ImageSpec
from services.common.images import sniff_content_type
from services.providers.procedural import render_icon

SAMPLE_PROMPTS = (
    "flaming obsidian greatsword",
    "frost crystal longbow",
    "healing potion",
    "holy golden shield",
    "toxic venom dagger",
    "shadow staff of the void",
    "ice axe",
    "golden ring of embers",
)


async def _follow(client: ForgelineClient, job_id: str, state: dict[str, dict]) -> None:
    started = time.monotonic()
    while True:
        result = await client.status(job_id)
        state[job_id] = {"result": result, "elapsed": time.monotonic() - started}
        if result.status in {"completed", "failed"}:
            return
        await asyncio.sleep(0.2)


def _table(prompts: dict[str, str], state: dict[str, dict], checks: dict[str, str] | None = None) -> Table:
    table = Table(title="Forgeline demo")
    for column in ("job", "prompt", "status", "route", "provider", "latency"):
        table.add_column(column)
    if checks is not None:
        table.add_column("image at URL")
    for job_id, prompt in prompts.items():
        entry = state.get(job_id, {})
        result: JobResult | None = entry.get("result")
        status = result.status if result else "submitted"
        colour = {"completed": "green", "failed": "red"}.get(status, "yellow")
        row = [
            job_id[:8], prompt, f"[{colour}]{status}[/]", _route(result),
            (result.provider or "-") if result else "-", f"{entry.get('elapsed', 0):.1f}s",
        ]
        if checks is not None:
            row.append(checks.get(job_id, "-"))
        table.add_row(*row)
    return table


def _route(result: JobResult | None) -> str:
    if result is None:
        return "-"
    return "cache" if result.cached else (result.route or "-")


async def _check_url(http: httpx.AsyncClient, result: JobResult) -> str:
    """Fetch the URL as a browser would and compare it with what the pipeline says it stored."""
    if result.url is None:
        return "[red]no URL[/]"
    response = await http.get(result.url)
    digest = hashlib.sha256(response.content).hexdigest()
    expected = (result.raw.get("result") or {}).get("sha256")
    if response.status_code != 200:
        return f"[red]HTTP {response.status_code}[/]"
    if digest != expected or sniff_content_type(response.content) is None:
        return "[red]bytes differ[/]"
    return f"[green]ok[/] {len(response.content) // 1024} KiB {response.headers.get('content-type')}"


async def run_demo(settings: devstack.DevStackSettings, console: Console) -> bool:
    pipeline = devstack.pipeline(settings)
    console.rule("[bold]Starting the pipeline")
    try:
        await asyncio.to_thread(pipeline.start, None, lambda m: console.print(f"  {m}"))
    except devstack.DevStackError as exc:
        console.print(f"[red]{exc}[/]\n[yellow]next:[/] `forgeline dev status`, then the logs it names")
        return False

    url = devstack.ingest_url(settings)
    console.rule(f"[bold]Submitting {len(SAMPLE_PROMPTS)} prompts to {url}")
    console.print(f"  primary: a (fake) Hugging Face Space, ~{settings.primary_latency_s:.1f} s an image, one at a time; "
                  f"past a queue depth of {settings.depth_high} the router sends jobs to the fallback path: a (fake) "
                  "Replicate, fast and paid, with a fake SiliconFlow behind it")
    seed = random.randrange(2**32)  # a new seed each run: fresh images, not yesterday's cache
    console.print(f"  seed {seed}")
    async with ForgelineClient(url) as client, httpx.AsyncClient(timeout=30) as http:
        prompts: dict[str, str] = {}
        for prompt in SAMPLE_PROMPTS:
            submitted = await client.submit(prompt, width=512, height=512, seed=seed)
            prompts[submitted.job_id] = prompt
        state: dict[str, dict] = {}
        followers = [asyncio.create_task(_follow(client, job_id, state)) for job_id in prompts]
        with Live(_table(prompts, state), console=console, refresh_per_second=8) as live:
            while not all(task.done() for task in followers):
                live.update(_table(prompts, state))
                await asyncio.sleep(0.125)
            live.update(_table(prompts, state))
        await asyncio.gather(*followers)

        results = {job_id: state[job_id]["result"] for job_id in prompts}
        checks = dict(zip(results, await asyncio.gather(*(_check_url(http, r) for r in results.values())), strict=True))
        console.print(_table(prompts, state, checks))
        for job_id, result in results.items():
            console.print(f"  {job_id[:8]}  {result.url or '-'}", soft_wrap=True)

        console.rule("[bold]The same request again")
        started = time.monotonic()
        again = await client.submit(SAMPLE_PROMPTS[0], width=512, height=512, seed=seed)
        console.print(f"  {SAMPLE_PROMPTS[0]!r}: HTTP answer in {(time.monotonic() - started) * 1000:.0f} ms, "
                      f"cached={again.cached}, same URL: {again.url == next(iter(results.values())).url}")

        compared = await _comparisons(client, console, seed, prompts, results)

    completed = [r for r in results.values() if r.status == "completed"]
    routes = {path: sum(_route(r) == path for r in completed) for path in ("primary", "fallback", "cache")}
    all_ok = (len(completed) == len(results) and all(c.startswith("[green]") for c in checks.values())
              and again.cached and compared)
    console.print(f"{len(completed)}/{len(results)} completed: {routes['primary']} on the primary path, "
                  f"{routes['fallback']} on the fallback path, {routes['cache']} from the cache; "
                  f"every URL serves its image: {'yes' if all_ok else 'NO'}")
    async with httpx.AsyncClient(timeout=10) as http:
        budget = (await http.get(f"{url}/v1/status")).json().get("budget") or {}
    if budget:
        console.print(f"paid spend this month: {budget.get('spent')} of {budget.get('cap')} "
                      f"(reserved {budget.get('reserved')}); keys and breakers: {url}/v1/status")
    console.print(f"API docs: {url}/docs · status: {url}/v1/status · the stack keeps running: "
                  "[bold]make status[/], [bold]make down[/]")
    return all_ok


def _comparison_table(title: str, comparison: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    colour = comparison["band_color"]
    table.add_row("score", f"[{colour}]{comparison['score']:.1f} — {comparison['band']}[/]")
    table.add_row("method", comparison["method"] + (f" ({comparison['fallback_reason']})"
                                                    if comparison.get("fallback_reason") else ""))
    table.add_row("provider", f"{comparison.get('provider') or '-'}  {comparison.get('model') or ''}")
    table.add_row("differences", "\n".join(comparison["differences"]) or "-")
    table.add_row("improvements", "\n".join(comparison["improvements"]) or "-")
    table.add_row("took", f"{comparison['response_time_ms']:.0f} ms")
    return table


async def _comparisons(client: ForgelineClient, console: Console, seed: int, prompts: dict[str, str],
                       results: dict[str, JobResult]) -> bool:
    """A generation with a reference image, then a comparison of another job against the same target."""
    prompt = SAMPLE_PROMPTS[0]
    console.rule("[bold]Generating against a reference image")
    concept = render_icon(ImageSpec(prompt=prompt, width=512, height=512, seed=(seed + 1) % 2**32))
    target = "data:image/png;base64," + base64.b64encode(concept).decode()
    console.print(f"  {prompt!r} with a reference image (the designer's concept art: the same item, other seed)")
    try:
        job = await client.generate(prompt, width=512, height=512, seed=seed, reference_image=target, timeout_s=120)
        attached = (job.raw.get("result") or {}).get("comparison")
        if attached is None:
            console.print(f"[red]  the result carries no comparison: {job.raw.get('result')}[/]")
            return False
        console.print(_comparison_table(f"job {job.job_id[:8]}: its image against the reference", attached))
        # Another item altogether: what a clearly worse match looks like.
        other_id = next(i for i, r in results.items() if r.status == "completed" and prompts[i] != prompt)
        console.rule("[bold]POST /v1/comparisons")
        view = await client.compare(target, other_id, prompt)
        console.print(_comparison_table(f"job {other_id[:8]} ({prompts[other_id]!r}) against the same reference",
                                        view["result"]))
    except ForgelineError as exc:
        console.print(f"[red]  comparison failed: {exc}[/]\n[yellow]next:[/] the comparer's log, `forgeline dev status`")
        return False
    return True
