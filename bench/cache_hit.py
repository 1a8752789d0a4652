"""A cache hit through ingest against the floor: FastAPI, a pydantic body and one Redis GET.

Starts its own ingest on a fresh Redis prefix of the running local stack (``forgeline dev up``),
stores one result in the cache, and serves ``bench/minimal_cache_endpoint.py`` (one uvicorn
process) beside it. Both get the same ``POST /v1/generations`` from the same load generator:
``wrk`` (Debian's, installed with apt-get when missing and root) at ``--connections``, then a
paced 50 req/s from Python for the light-load latency. Runs alternate between the two; the
last lines are each figure's median over the runs and the ratio.

    python bench/cache_hit.py                       # 3 runs of 10 s, 16 connections
    python bench/cache_hit.py --runs 3 --duration 10 --connections 16 --light-rate 50
    python bench/cache_hit.py --ingest-workers 2    # two ingest processes on the port, against one floor
    python bench/cache_hit.py --profile /tmp/prof   # py-spy on ingest during its first wrk run

Besides req/s and latency it prints the CPU each server spent per request (``/proc``, the
ingest's siblings included): on a shared machine that figure moves far less than the others.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from e2e import cpu_seconds, start_profilers, stop_profilers
from kafka_ceiling import percentile

from services import devstack
from services.common.cache import CacheScope, LruTtlCache, RedisResultCache
from services.common.contracts import GenerationCompleted
from services.common.redis import KeySpace, make_redis
from services.common.settings import RedisSettings
from services.devstack.pipeline import Pipeline
from services.devstack.process import free_ports, port_answers, wait_until
from services.ingest.api_models import GenerationRequestBody

BENCH = Path(__file__).resolve().parent
BODY = '{"prompt": "cached obsidian greatsword", "width": 512, "height": 512, "seed": 7}'
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Load:
    req_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: float = 0.0  # the server's CPU per request


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (the ingest's sibling workers), from ``/proc``."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:  # ended meanwhile
            continue
        if int(raw[raw.rindex(")") + 2:].split()[1]) == pid:
            children.append(int(stat.parent.name))
    return [pid, *children]


def tree_cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is missing: install it with `sudo apt-get install -y wrk`")
    print("installing wrk with apt-get…", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("wrk") or sys.exit("apt-get installed wrk, but it is not on PATH")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * _UNITS[unit]


def run_wrk(wrk: str, url: str, script: Path, connections: int, duration: int, server: list[int]) -> Load:
    """``wrk`` against ``url`` with the POST of ``script``; fails on any non-2xx answer.

    ``server``: the pids answering, whose CPU per request is measured over the run.
    """
    cpu_before = tree_cpu_seconds(server)
    out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
                         check=True, capture_output=True, text=True).stdout
    cpu = tree_cpu_seconds(server) - cpu_before
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw error answers from {url}:\n{out}")
    if errors := re.search(r"Socket errors: .*", out):  # e.g. answers slower than wrk's 2 s timeout
        print(f"    wrk against {url}: {errors.group(0)}", flush=True)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    return Load(rate, _ms(latency["50"]), _ms(latency["99"]), cpu * 1e6 / max(1, requests))


async def paced(url: str, rate: float, duration: float) -> Load:
    """``rate`` POSTs a second for ``duration`` s, each timed from its send to its answer."""
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=10) as http:
        await http.post(url, content=BODY, headers={"content-type": "application/json"})  # connect first

        async def one() -> None:
            started = time.perf_counter()
            response = await http.post(url, content=BODY, headers={"content-type": "application/json"})
            if response.status_code != 200:
                raise SystemExit(f"{url}: HTTP {response.status_code}: {response.text[:300]}")
            latencies.append((time.perf_counter() - started) * 1000)

        began = time.monotonic()
        tasks = []
        for i in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return Load(len(latencies) / (time.monotonic() - began), percentile(latencies, 50), percentile(latencies, 99))


async def seed_cache(redis_url: str, key_prefix: str) -> str:
    """Store one result under the cache key ingest computes for ``BODY``; returns the Redis key."""
    body = GenerationRequestBody.model_validate_json(BODY)
    completed = GenerationCompleted(
        job_id=uuid.uuid4().hex, tenant="default", url="https://cdn.example/images/ab/cached.png",
        object_key="images/ab/cached.png", sha256="ab" * 32, content_type="image/png", size_bytes=40_000,
        spec=body.spec_fields(), provider="procedural", deterministic=True,
    )
    redis = make_redis(RedisSettings(url=redis_url))
    keys = KeySpace(key_prefix)
    key = CacheScope().key(completed.spec, "public")  # the unkeyed callers' tenant, per-tenant scope
    await RedisResultCache(redis, keys, ttl_s=3600, local=LruTtlCache(0, 0)).put(key, completed)
    await redis.aclose()
    return keys.key("cache", key)


def middle(loads: list[Load]) -> Load:
    def pick(attr: str) -> float:
        return sorted(getattr(load, attr) for load in loads)[len(loads) // 2]

    return Load(pick("req_per_s"), pick("p50_ms"), pick("p99_ms"), pick("cpu_us"))


def report(title: str, ingest: Load, minimal: Load) -> None:
    print(f"\n{title}")
    print(f"{'figure':12} {'ingest':>10} {'minimal':>10} {'ratio':>8}")
    figures = [("req/s", "req_per_s"), ("p50 ms", "p50_ms"), ("p99 ms", "p99_ms")]
    if ingest.cpu_us:
        figures.append(("CPU µs/req", "cpu_us"))
    for name, attr in figures:
        mine, floor = getattr(ingest, attr), getattr(minimal, attr)
        print(f"{name:12} {mine:10.1f} {floor:10.1f} {mine / floor:8.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds of wrk per run and endpoint")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--light-rate", type=float, default=50.0, help="req/s of the light-load run")
    parser.add_argument("--light-duration", type=float, default=10.0)
    parser.add_argument("--ingest-workers", type=int, default=1, help="FORGELINE_INGEST_WORKERS (the floor has one)")
    parser.add_argument("--profile", type=Path, help="py-spy ingest during its first wrk run into DIR/ingest.txt")
    args = parser.parse_args()
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile records with py-spy, which is not on PATH: pip install py-spy")

    wrk = ensure_wrk()
    stack = devstack.DevStackSettings()
    if not all(s.answers for s in devstack.status(stack)):
        raise SystemExit("the local stack is not running: start it with `forgeline dev up` (or `make up`)")
    env = devstack.env(stack)
    run_id = uuid.uuid4().hex[:8]
    key_prefix = f"bench:{run_id}:"
    redis_key = await seed_cache(env["FORGELINE_REDIS_URL"], key_prefix)
    ingest_port, minimal_port = free_ports(2)
    urls = {"ingest": f"http://127.0.0.1:{ingest_port}/v1/generations",
            "minimal": f"http://127.0.0.1:{minimal_port}/v1/generations"}
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as state:
        script = Path(state) / "post.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = \'{BODY}\'\n'
                          'wrk.headers["Content-Type"] = "application/json"\n')
        pipeline = Pipeline(Path(state), env | {
            "FORGELINE_TOPICS_PREFIX": f"bench-{run_id}", "FORGELINE_REDIS_KEY_PREFIX": key_prefix,
            "FORGELINE_INGEST_PORT": str(ingest_port), "FORGELINE_INGEST_WORKERS": str(args.ingest_workers),
        }, ingest_url=urls["ingest"].removesuffix("/v1/generations"))
        minimal_log = (Path(state) / "minimal.log").open("w")  # noqa: SIM115 — the server's, closed with the folder
        minimal = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH), "minimal_cache_endpoint:app",
             "--host", "127.0.0.1", "--port", str(minimal_port), "--no-access-log", "--log-level", "warning"],
            env=os.environ | {"REDIS_URL": env["FORGELINE_REDIS_URL"], "CACHE_KEY": redis_key},
            stdout=minimal_log, stderr=subprocess.STDOUT)
        try:
            await asyncio.to_thread(pipeline.start, ["ingest"], lambda m: print(f"  {m}", flush=True))
            log = Path(state) / "minimal.log"
            wait_until(lambda: port_answers("127.0.0.1", minimal_port), what="the minimal endpoint", timeout=30,
                       progress=print, log_path=log, alive=lambda: minimal.poll() is None)
            first = httpx.post(urls["ingest"], content=BODY, headers={"content-type": "application/json"})
            if first.status_code != 200 or not first.json().get("cached"):
                raise SystemExit(f"ingest did not answer from the cache: HTTP {first.status_code}: {first.text[:300]}")
            print(f"cache hit: ingest ({args.ingest_workers} worker(s)) {urls['ingest']} vs minimal {urls['minimal']}; wrk {args.connections} "
                  f"connections × {args.duration} s, {args.runs} runs", flush=True)
            servers = {"ingest": process_tree(pipeline.process("ingest").pid()), "minimal": [minimal.pid]}
            loaded: dict[str, list[Load]] = {"ingest": [], "minimal": []}
            light: dict[str, list[Load]] = {"ingest": [], "minimal": []}
            for run in range(args.runs):
                for name in ("minimal", "ingest"):
                    profiling = args.profile is not None and run == 0 and name == "ingest"
                    profilers = start_profilers({"ingest": servers["ingest"][0]}, args.profile) if profiling else []
                    load = run_wrk(wrk, urls[name], script, args.connections, args.duration, servers[name])
                    stop_profilers(profilers)
                    loaded[name].append(load)
                    print(f"  run {run + 1} {name:8} wrk: {load.req_per_s:7.1f} req/s, p50 {load.p50_ms:6.1f} ms, "
                          f"p99 {load.p99_ms:6.1f} ms, CPU {load.cpu_us:6.0f} µs/req", flush=True)
                for name in ("minimal", "ingest"):
                    load = await paced(urls[name], args.light_rate, args.light_duration)
                    light[name].append(load)
                    print(f"  run {run + 1} {name:8} {args.light_rate:.0f} req/s: p50 {load.p50_ms:6.1f} ms, "
                          f"p99 {load.p99_ms:6.1f} ms", flush=True)
        finally:
            minimal.terminate()
            minimal.wait(10)
            await asyncio.to_thread(pipeline.stop)
    report(f"wrk, {args.connections} connections (median of {args.runs})", middle(loaded["ingest"]),
           middle(loaded["minimal"]))
    report(f"paced {args.light_rate:.0f} req/s (median of {args.runs})", middle(light["ingest"]),
           middle(light["minimal"]))


if __name__ == "__main__":
    asyncio.run(main())
