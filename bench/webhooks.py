"""Webhook delivery latency after completion, against a Kafka subscriber of the same completed events.

Starts its own pipeline processes (router, both generators, storage, webhooks, ingest) on a fresh
topic prefix against the running local stack (``forgeline dev up``) and a webhook receiver on
loopback, pushes N jobs with a ``webhook_url`` through ``POST /v1/generations``, and measures, per job,
from the ``completed_at`` that storage stamps on the event to (a) the signed POST reaching the
receiver and (b) a plain Kafka consumer of ``generation.completed`` receiving the event: the
baseline, measured in the same run. The webhooks service runs with its production settings except
the tests-only loopback allowance.

    python bench/webhooks.py -n 300

The last lines are the figures: p50/p95/p99 of each, and webhook ÷ Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import uvicorn
from e2e import collect, fresh_run, percentile, submit_all
from standardwebhooks import Webhook
from starlette.requests import Request

from services.common.kafka import make_admin
from services.common.topics import Topics, delete_topics
from services.devstack.pipeline import Pipeline
from services.devstack.process import free_ports


class Receiver:
    """Verifies each delivery with standardwebhooks and notes when it arrived (wall clock)."""

    def __init__(self) -> None:
        self.secret = ""
        self.arrived: dict[str, float] = {}  # job id → seconds after its completed_at
        self.unverified = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = await Request(scope, receive).body()
        now = time.time()
        try:
            payload = Webhook(self.secret).verify(body, {k.decode(): v.decode() for k, v in scope["headers"]})
            completed_at = datetime.fromisoformat(payload["data"]["timings"]["completed_at"]).timestamp()
            self.arrived.setdefault(payload["data"]["job_id"], now - completed_at)
        except Exception:  # noqa: BLE001 — counted and reported
            self.unverified += 1
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def row(name: str, seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return (f"{name:34} {percentile(ms, 50):9.1f} {percentile(ms, 95):9.1f} {percentile(ms, 99):9.1f} "
            f"{statistics.fmean(ms):9.1f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="jobs to push (default 300)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP submitters")
    args = parser.parse_args()

    env, run_id, kafka, topic_settings = await fresh_run(3)
    prefix = topic_settings.prefix

    receiver = Receiver()
    ingest_port, receiver_port = free_ports(2)
    server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=receiver_port, log_level="warning",
                                           lifespan="off"))
    serving = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{ingest_port}"
    quiet = {f"FORGELINE_{name}_LOG_LEVEL": "WARNING" for name in ("INGEST", "ROUTER", "GENERATOR", "STORAGE")}
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as state:
        pipeline = Pipeline(Path(state), env | quiet | {
            "FORGELINE_TOPICS_PREFIX": prefix, "FORGELINE_REDIS_KEY_PREFIX": f"bench:{run_id}:",
            "FORGELINE_INGEST_PORT": str(ingest_port), "FORGELINE_INGEST_ALLOW_LOOPBACK_URLS": "true",
            "FORGELINE_WEBHOOKS_ALLOW_LOOPBACK_FOR_TESTS": "true", "FORGELINE_GENERATOR_CONCURRENCY": "8",
        }, ingest_url=url)
        services = ["router", "generator-primary", "generator-fallback", "storage", "webhooks", "ingest"]
        await asyncio.to_thread(pipeline.start, services, lambda m: print(f"  {m}", flush=True))
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                receiver.secret = (await http.post("/v1/webhooks/secret")).json()["secret"]
            received: dict = {}
            ready = asyncio.Event()
            collector = asyncio.create_task(collect(kafka, Topics(prefix), args.n, f"bench {run_id}", received, ready))
            await ready.wait()
            arrived_kafka: dict[str, float] = {}
            submitted: dict[str, float] = {}
            body = {"webhook_url": f"http://127.0.0.1:{receiver_port}/hook"}
            await submit_all(url, list(range(args.n)), f"bench {run_id}", 128, args.clients, None, submitted, extra=body)
            await asyncio.wait_for(collector, timeout=300)
            for job_id, (monotonic_at, completed) in received.items():
                # collect() stamps time.monotonic(); convert to wall clock with one offset taken now.
                wall_at = monotonic_at + (time.time() - time.monotonic())
                arrived_kafka[job_id] = wall_at - completed.timings.completed_at.timestamp()
            deadline = time.monotonic() + 120
            while len(receiver.arrived) < args.n and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        finally:
            await asyncio.to_thread(pipeline.stop)
            server.should_exit = True
            await serving
            admin = make_admin(kafka)
            await admin.start()
            await delete_topics(admin, topic_settings)
            await admin.close()

    hooks, subscriber = list(receiver.arrived.values()), list(arrived_kafka.values())
    print(f"\n{len(hooks)}/{args.n} deliveries verified with standardwebhooks ({receiver.unverified} did not "
          f"verify); {len(subscriber)} completed events read from Kafka")
    print(f"{'after completed_at':34} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    print(row("Kafka subscriber (baseline)", subscriber))
    print(row("webhook delivered (signed POST)", hooks))
    print(f"ratio webhook / Kafka: p50 {percentile(hooks, 50) / percentile(subscriber, 50):.2f}x, "
          f"p99 {percentile(hooks, 99) / percentile(subscriber, 99):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
