"""End-to-end throughput and latency of the generation path, on the local stack.

Starts its own pipeline processes (router, two generators, storage, ingest) on a fresh topic
prefix against the running local stack (``forgeline dev up``), pushes N jobs with distinct
prompts (so no cache hits) through ``POST /v1/generations``, and reads every completed event
from Kafka. Stage latencies come from the timestamps each stage stamps on the job; end to end
is from acceptance to the moment this subscriber received the completed event.

    python bench/e2e.py -n 1000
    python bench/e2e.py -n 200 --latency 0.5      # a slow provider: 0.5 s an image

The last lines are the figures: throughput, then p50/p95/p99 per stage and end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

from services import devstack
from services.common import contracts as c
from services.common.kafka import make_admin, make_consumer
from services.common.settings import KafkaSettings, TopicSettings
from services.common.topics import Topics, create_topics, delete_topics
from services.devstack.pipeline import Pipeline
from services.devstack.process import free_ports

STAGES = (("accepted → routed", "accepted_at", "routed_at"), ("routed → generated", "routed_at", "generated_at"),
          ("generated → completed", "generated_at", "completed_at"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def submit_all(url: str, n: int, run_id: str, width: int, concurrency: int, submitted: dict[str, float],
                     extra: dict | None = None) -> None:
    """POST ``n`` distinct prompts (with ``extra`` fields) from ``concurrency`` clients; ``submitted``: job → when."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body = {"prompt": f"bench {run_id} sword {i}", "width": width, "height": width, **(extra or {})}
                response = await http.post("/v1/generations", json=body)
                if response.status_code != 202:
                    raise RuntimeError(f"job {i}: HTTP {response.status_code}: {response.text[:300]}")
                submitted[response.json()["job_id"]] = time.monotonic()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def collect(kafka: KafkaSettings, topics: Topics, n: int, received: dict[str, tuple[float, c.GenerationCompleted]],
                  ready: asyncio.Event) -> None:
    consumer = make_consumer(kafka, topics.name("generation.completed"), group_id=None)
    await consumer.start()
    ready.set()
    try:
        while len(received) < n:
            batches = await consumer.getmany(timeout_ms=500)
            now = time.monotonic()
            for record in (r for rs in batches.values() for r in rs):
                completed = c.decode(c.GenerationCompleted, record.value)
                received.setdefault(completed.job_id, (now, completed))
    finally:
        await consumer.stop()


async def progress(n: int, submitted: dict, received: dict, done: asyncio.Event) -> None:
    started = time.monotonic()
    while not done.is_set():
        await asyncio.sleep(2)
        print(f"  {time.monotonic() - started:5.0f}s  submitted {len(submitted):5d}/{n}  completed {len(received):5d}/{n}",
              flush=True)


def seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    return (later - earlier).total_seconds() if later and earlier else None


async def fresh_run(partitions: int) -> tuple[dict[str, str], str, KafkaSettings, TopicSettings]:
    """The running local stack's environment, a run id, and topics under a prefix of this run only."""
    stack = devstack.DevStackSettings()
    if not all(s.answers for s in devstack.status(stack)):
        raise SystemExit("the local stack is not running: start it with `forgeline dev up` (or `make up`)")
    env = devstack.env(stack)
    run_id = uuid.uuid4().hex[:8]
    kafka = KafkaSettings(bootstrap=env["FORGELINE_KAFKA_BOOTSTRAP"])
    topic_settings = TopicSettings(prefix=f"bench-{run_id}", partitions=partitions)
    admin = make_admin(kafka)
    await admin.start()
    await create_topics(admin, topic_settings)
    await admin.close()
    return env, run_id, kafka, topic_settings


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="jobs to push (default 1000)")
    parser.add_argument("--latency", type=float, default=0.0, help="simulated provider latency in seconds")
    parser.add_argument("--size", type=int, default=256, help="image width and height (default 256)")
    parser.add_argument("--generator-concurrency", type=int, default=8, help="images in flight per generator")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP submitters")
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()

    env, run_id, kafka, topic_settings = await fresh_run(args.partitions)
    prefix = topic_settings.prefix

    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as state:
        pipeline = Pipeline(Path(state), env | {
            "FORGELINE_TOPICS_PREFIX": prefix, "FORGELINE_REDIS_KEY_PREFIX": f"bench:{run_id}:",
            "FORGELINE_INGEST_PORT": str(port), "FORGELINE_INGEST_LOG_LEVEL": "WARNING",
            "FORGELINE_ROUTER_LOG_LEVEL": "WARNING", "FORGELINE_GENERATOR_LOG_LEVEL": "WARNING",
            "FORGELINE_STORAGE_LOG_LEVEL": "WARNING",
            "FORGELINE_GENERATOR_SIMULATED_LATENCY_S": str(args.latency),
            "FORGELINE_GENERATOR_CONCURRENCY": str(args.generator_concurrency),
        }, ingest_url=url)
        print(f"pipeline on prefix {prefix}: {args.n} jobs, {args.size}x{args.size}, provider latency "
              f"{args.latency:.2f} s, generator concurrency {args.generator_concurrency}, {args.clients} clients",
              flush=True)
        await asyncio.to_thread(pipeline.start, None, lambda m: print(f"  {m}", flush=True))
        try:
            submitted: dict[str, float] = {}
            received: dict[str, tuple[float, c.GenerationCompleted]] = {}
            ready, done = asyncio.Event(), asyncio.Event()
            collector = asyncio.create_task(collect(kafka, Topics(prefix), args.n, received, ready))
            await ready.wait()
            reporter = asyncio.create_task(progress(args.n, submitted, received, done))
            began = time.monotonic()
            await submit_all(url, args.n, run_id, args.size, args.clients, submitted)
            submit_s = time.monotonic() - began
            await asyncio.wait_for(collector, timeout=max(300, args.n * (args.latency + 1)))
            elapsed = max(at for at, _ in received.values()) - began
            done.set()
            await reporter
        finally:
            await asyncio.to_thread(pipeline.stop)
            admin = make_admin(kafka)
            await admin.start()
            await delete_topics(admin, topic_settings)
            await admin.close()

    events = [completed for _, completed in received.values()]
    paths = {p: sum(e.path == p for e in events) for p in ("primary", "fallback")}
    print(f"\n{len(events)} jobs completed; routed primary {paths['primary']}, fallback {paths['fallback']}; "
          f"submitting took {submit_s:.1f} s")
    rows = []
    for name, start, end in STAGES:
        values = [s for e in events if (s := seconds(getattr(e.timings, end), getattr(e.timings, start))) is not None]
        rows.append((name, values))
    rows.append(("end to end (subscriber)", [at - submitted[job] for job, (at, _) in received.items()]))
    print(f"throughput: {len(events) / elapsed:.1f} jobs/s ({len(events)} in {elapsed:.1f} s)")
    print(f"{'stage':26} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for name, values in rows:
        ms = [v * 1000 for v in values]
        print(f"{name:26} {percentile(ms, 50):9.1f} {percentile(ms, 95):9.1f} {percentile(ms, 99):9.1f} "
              f"{statistics.fmean(ms):9.1f}")


if __name__ == "__main__":
    asyncio.run(main())
