"""Provider calls in flight in one process: the generator's HTTP client against httpx's default one.

Starts the fake providers (``forgeline dev fake-providers``) with the fake OpenAI-compatible
images API answering after ``--latency`` seconds (default 2), then, in a fresh process per
client, makes ``-n`` calls at once through Forgeline's OpenAI images adapter: first with
``httpx.AsyncClient()`` as it comes (100 connections, 20 kept alive), then with the client every
Forgeline service uses (``services.common.bootstrap.make_http_client``). Each prints how long
the calls took against the ideal (one latency: every call in flight at once), calls per second,
and the process's peak RSS. Median of ``--runs``.

    python bench/inflight.py -n 2000 --latency 2
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import subprocess
import sys
import time

import httpx

from services.common.bootstrap import make_http_client
from services.common.contracts import ImageSpec
from services.devstack.process import free_ports, port_answers
from services.fakeproviders.server import PROTOCOLS
from services.providers.openai_images import OpenAIImagesConfig, OpenAIImagesProvider

CLIENTS = {"httpx default": httpx.AsyncClient, "forgeline": make_http_client}


async def _calls(client_name: str, base_url: str, n: int) -> tuple[float, int]:
    async with CLIENTS[client_name]() as http:
        provider = OpenAIImagesProvider(OpenAIImagesConfig(base_url=base_url, timeout_s=600), http)
        began = time.monotonic()
        spec = ImageSpec(prompt="inflight sword", width=64, height=64)  # the fake draws it once
        images = await asyncio.gather(*(provider.generate(spec, "sk-fake-inflight") for _ in range(n)))
        elapsed = time.monotonic() - began
    return elapsed, sum(image.content_type == "image/png" for image in images)


def _measure(client_name: str, base_url: str, n: int, results) -> None:
    try:
        elapsed, done = asyncio.run(_calls(client_name, base_url, n))
    except Exception as exc:  # noqa: BLE001 — reported as this client's result
        results.put(f"{type(exc).__name__}: {exc}")
        return
    results.put((elapsed, done, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(client_name: str, base_url: str, n: int) -> tuple[float, int, float] | str:
    """In a fresh process (so RSS is this client's alone): seconds, calls done, peak RSS in MB; or why it failed."""
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    process = spawn.Process(target=_measure, args=(client_name, base_url, n, results))
    process.start()
    figures = results.get(timeout=900)
    process.join(30)
    return figures


def start_fakes(latency_s: float, attempts: int = 5) -> tuple[subprocess.Popen, int]:
    """The fake providers on six ports from a free one (another, if one of the six was taken meanwhile)."""
    for _ in range(attempts):
        port_base = free_ports(1)[0]
        port = port_base + PROTOCOLS.index("openai")
        fakes = subprocess.Popen([sys.executable, "-m", "services.cli", "dev", "fake-providers", "--port",
                                  str(port_base), "--latency", f"openai={latency_s}"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while fakes.poll() is None and time.monotonic() < deadline:
            if port_answers("127.0.0.1", port):
                return fakes, port
            time.sleep(0.2)
        fakes.terminate()
        fakes.wait(10)
    raise SystemExit(f"the fake providers did not start in {attempts} attempts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="calls at once (default 2000)")
    parser.add_argument("--latency", type=float, default=2.0, help="the fake provider's seconds per image")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    fakes, openai_port = start_fakes(args.latency)
    try:
        base_url = f"http://127.0.0.1:{openai_port}"
        print(f"{args.n} calls at once, fake provider latency {args.latency:.1f} s, {args.runs} runs", flush=True)
        figures: dict[str, list[tuple[float, int, float]]] = {name: [] for name in CLIENTS}
        for run in range(args.runs):
            for name in CLIENTS:
                result = measure(name, base_url, args.n)
                if isinstance(result, str):  # e.g. httpx's pool timing out calls queued behind its 100 connections
                    print(f"  run {run + 1} {name:14} failed: {result}", flush=True)
                    continue
                elapsed, done, rss = result
                figures[name].append(result)
                print(f"  run {run + 1} {name:14} {done} calls in {elapsed:6.1f} s ({done / elapsed:6.1f} calls/s), "
                      f"peak RSS {rss:5.0f} MB", flush=True)
    finally:
        fakes.terminate()
        fakes.wait(10)
    print(f"\n{'client':14} {'seconds':>8} {'× ideal':>8} {'calls/s':>8} {'RSS MB':>7}  (median of finished runs)")
    for name, runs in figures.items():
        if not runs:
            print(f"{name:14} every run failed")
            continue
        elapsed = sorted(r[0] for r in runs)[len(runs) // 2]
        rss = sorted(r[2] for r in runs)[len(runs) // 2]
        print(f"{name:14} {elapsed:8.1f} {elapsed / args.latency:8.2f} {args.n / elapsed:8.1f} {rss:7.0f}")


if __name__ == "__main__":
    main()
