"""Paid provider calls for a burst of duplicate requests, with coalescing and without it.

Starts its own pipeline processes (router, both generators, storage, ingest) on a fresh topic
prefix against the running local stack (``forgeline dev up``), with a fake Replicate (paid,
``--latency`` seconds a prediction) on both paths, so every image is a paid call. Each run
sends a burst of ``--distinct`` prompts × ``--copies`` identical requests each, all at once,
through ``POST /v1/generations`` (fresh prompts per run: no cache hits), and waits for every
job's completed event. It counts the predictions the fake was asked to create (the paid calls)
and the end-to-end latency. The pipeline runs once with the router's coalescing on (the
default) and once with ``FORGELINE_ROUTER_COALESCE=false``: the baseline, in the same run.

    python bench/coalescing.py --distinct 5 --copies 20 --runs 3

The last lines are the figures, medians over the runs: paid calls and their ratio to the
baseline, jobs completed, p50/p95 end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml
from e2e import fresh_run, percentile

from services.common.kafka import make_admin, make_consumer
from services.common.settings import KafkaSettings
from services.common.topics import Topics, delete_topics
from services.devstack.pipeline import Pipeline
from services.devstack.process import free_ports
from services.fakeproviders import replicate
from services.fakeproviders.base import FakeProvider, Knobs
from services.fakeproviders.server import serve_fake

SERVICES = ["router", "generator-primary", "generator-fallback", "storage", "ingest"]


def providers_file(folder: Path, url: str) -> Path:
    """The fake Replicate on both paths: every provider call is a paid one."""
    replicate_entry = {"name": "replicate-fake", "type": "replicate", "keys_env": "BENCH_KEYS_REPLICATE",
                       "cost_usd": 0.0023, "options": {"model": "black-forest-labs/flux-schnell", "base_url": url,
                                                       "poll_interval_s": 0.2, "prefer_wait_s": 1}}
    path = folder / "providers.yaml"
    path.write_text(yaml.safe_dump({"primary": [replicate_entry], "fallback": [replicate_entry]}))
    return path


async def completions(kafka: KafkaSettings, topics: Topics, job_ids: set[str], ready: asyncio.Event,
                      arrived: dict[str, float]) -> None:
    """When each of ``job_ids`` got its terminal event (completed or failed), by this subscriber's clock."""
    consumer = make_consumer(kafka, topics.name("generation.completed"), group_id=None)
    consumer.subscribe([topics.name("generation.completed"), topics.name("generation.failed")])
    await consumer.start()
    ready.set()
    try:
        while not job_ids <= arrived.keys():
            batches = await consumer.getmany(timeout_ms=300)
            for record in (r for rs in batches.values() for r in rs):
                if record.topic.endswith("generation.completed") and (key := record.key.decode()) in job_ids:
                    arrived.setdefault(key, time.monotonic())
    finally:
        await consumer.stop()


async def one_burst(url: str, kafka: KafkaSettings, topics: Topics, fake: FakeProvider, distinct: int,
                    copies: int) -> dict[str, float]:
    """One burst of duplicates; its paid calls, completions and end-to-end latencies."""
    tag = uuid.uuid4().hex[:8]
    bodies = [{"prompt": f"bench {tag} item {i}", "width": 64, "height": 64} for i in range(distinct)] * copies
    calls_before = len(_creates(fake))
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        ready, arrived = asyncio.Event(), {}
        began = time.monotonic()
        answers = await asyncio.gather(*(http.post("/v1/generations", json=body) for body in bodies))
        job_ids = {a.json()["job_id"] for a in answers if a.status_code == 202}
        collector = asyncio.create_task(completions(kafka, topics, job_ids, ready, arrived))
        await asyncio.wait_for(collector, timeout=600)
    latencies = sorted(at - began for at in arrived.values())
    return {"paid calls": len(_creates(fake)) - calls_before, "jobs": len(bodies), "completed": len(arrived),
            "p50 s": percentile(latencies, 50), "p95 s": percentile(latencies, 95)}


def _creates(fake: FakeProvider) -> list:
    return [r for r in fake.requests if r.method == "POST" and r.path.endswith("/predictions")]


async def measure(coalesce: bool, args: argparse.Namespace) -> list[dict[str, float]]:
    """``args.runs`` bursts on a pipeline of its own, with the router's coalescing on or off."""
    env, run_id, kafka, topic_settings = await fresh_run(3)
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    fake = FakeProvider("replicate-fake", Knobs(latency_s=args.latency))
    quiet = {f"FORGELINE_{name}_LOG_LEVEL": "WARNING" for name in ("INGEST", "ROUTER", "GENERATOR", "STORAGE")}
    async with serve_fake(replicate.create_app(fake)) as fake_url:
        with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as state:
            pipeline = Pipeline(Path(state), env | quiet | {
                "FORGELINE_TOPICS_PREFIX": topic_settings.prefix, "FORGELINE_REDIS_KEY_PREFIX": f"bench:{run_id}:",
                "FORGELINE_INGEST_PORT": str(port), "FORGELINE_GENERATOR_CONCURRENCY": "64",
                "FORGELINE_GENERATOR_PROVIDERS_FILE": str(providers_file(Path(state), fake_url)),
                "BENCH_KEYS_REPLICATE": "r8_bench-coalescing-key-000000007",
                "FORGELINE_ROUTER_COALESCE": "true" if coalesce else "false",
                "FORGELINE_BUDGET_CAP_USD": "1000",
            }, ingest_url=url)
            await asyncio.to_thread(pipeline.start, SERVICES, lambda m: print(f"  {m}", flush=True))
            try:
                runs = []
                for i in range(args.runs):
                    runs.append(await one_burst(url, kafka, Topics(topic_settings.prefix), fake, args.distinct,
                                                args.copies))
                    print(f"  coalescing {'on' if coalesce else 'off'}, run {i + 1}: {runs[-1]}", flush=True)
                return runs
            finally:
                await asyncio.to_thread(pipeline.stop)
                admin = make_admin(kafka)
                await admin.start()
                await delete_topics(admin, topic_settings)
                await admin.close()


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distinct", type=int, default=5, help="distinct prompts per burst (default 5)")
    parser.add_argument("--copies", type=int, default=20, help="identical requests per prompt (default 20)")
    parser.add_argument("--latency", type=float, default=2.0, help="seconds a fake prediction takes (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="bursts per mode; medians are printed (default 3)")
    args = parser.parse_args()

    baseline = medians(await measure(False, args))
    coalesced = medians(await measure(True, args))
    print(f"\nburst: {args.distinct} prompts × {args.copies} identical requests, {args.latency:g} s a prediction; "
          f"medians of {args.runs} runs")
    print(f"{'':22} {'paid calls':>10} {'completed':>10} {'p50 s':>8} {'p95 s':>8}")
    for name, figures in (("coalescing off", baseline), ("coalescing on", coalesced)):
        print(f"{name:22} {figures['paid calls']:10.0f} {figures['completed']:>5.0f}/{figures['jobs']:<4.0f} "
              f"{figures['p50 s']:8.2f} {figures['p95 s']:8.2f}")
    print(f"paid calls, on / off: {coalesced['paid calls'] / baseline['paid calls']:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
