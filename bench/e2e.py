"""End-to-end throughput and latency of the generation path, on the local stack.

Starts its own pipeline processes (router, two generators, storage, ingest) on a fresh topic
prefix against the running local stack (``forgeline dev up``), pushes N jobs with distinct
prompts (so no cache hits) through ``POST /v1/generations`` (or, with ``--source kafka``, produced straight
to ``generation.requested`` as a game backend may and as the ceiling's source does), and reads every completed event
from Kafka. Stage latencies come from the timestamps each stage stamps on the job; end to end
is from acceptance to the moment this subscriber received the completed event.

    python bench/e2e.py -n 1000
    python bench/e2e.py -n 200 --latency 0.5      # a slow provider: 0.5 s an image
    python bench/e2e.py -n 1000 --provider instant --runs 3             # against the ceiling
    python bench/e2e.py -n 1000 --provider instant --rate 100 --runs 3  # latency at an offered rate
    python bench/e2e.py -n 1000 --provider instant --source kafka --runs 3  # the ceiling's source: no HTTP

``--provider instant`` answers with pre-rendered distinct images (no render time, no S3
de-duplication), so what is measured is Forgeline's own work. After the pipeline's runs it
stops the services and measures the ceiling (``bench/kafka_ceiling.py``: a bare aiokafka chain of
the same four hops, record sizes and settings) with the same number of messages and offered
rate, and prints both with the ratio (``--no-ceiling`` skips it).

The last lines are the figures: throughput, then p50/p95/p99 per stage and end to end; with
``--runs`` above 1, each figure's median over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import kafka_ceiling  # bench/kafka_ceiling.py, beside this script

from services import devstack
from services.common import contracts as c
from services.common.kafka import event_headers, make_admin, make_consumer, make_producer
from services.common.settings import KafkaSettings, TopicSettings
from services.common.topics import Topics, create_topics, delete_topics
from services.devstack.pipeline import Pipeline
from services.devstack.process import free_ports
from services.ingest.auth import DEFAULT_TENANT  # the tenant of a request without a key, as ingest names it

STAGES = (("accepted → routed", "accepted_at", "routed_at"), ("routed → generated", "routed_at", "generated_at"),
          ("generated → completed", "generated_at", "completed_at"))
SHARED = ("kafka", "redis", "s3")  # the local stack's processes (devstack.status names them so)
SERVICES = ("ingest", "router", "generator-primary", "generator-fallback", "storage")
INSTANT_PROVIDERS = "primary: [{name: instant, type: instant}]\nfallback: [{name: instant, type: instant}]\n"

percentile = kafka_ceiling.percentile


async def submit_all(url: str, jobs: list[int], tag: str, width: int, concurrency: int, rate: float | None,
                     submitted: dict[str, float], extra: dict | None = None) -> None:
    """POST a distinct prompt (with ``extra`` fields) per job, ``concurrency`` at a time; with ``rate``, the n-th
    starts no sooner than n / rate s in. ``submitted``: job id → when it was accepted."""
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for n, i in enumerate(jobs):
        queue.put_nowait((n, i))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    began = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:

        async def worker() -> None:
            while not queue.empty():
                n, i = queue.get_nowait()
                if rate:
                    await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
                body = {"prompt": f"{tag} sword {i}", "width": width, "height": width, **(extra or {})}
                response = await http.post("/v1/generations", json=body)
                if response.status_code != 202:
                    raise RuntimeError(f"job {i}: HTTP {response.status_code}: {response.text[:300]}")
                submitted[response.json()["job_id"]] = time.monotonic()

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def produce_all(kafka: KafkaSettings, topics: Topics, jobs: list[int], tag: str, width: int,
                      rate: float | None, submitted: dict[str, float]) -> None:
    """Produce a distinct request per job straight to ``generation.requested``, as a game backend may and as the
    ceiling's source does (sends not awaited one by one); with ``rate``, the n-th no sooner than n / rate s in.
    ``submitted``: job id → when it was sent."""
    producer = make_producer(kafka)
    await producer.start()
    topic = topics.name("generation.requested")
    try:
        began = time.monotonic()
        pending = []
        for n, i in enumerate(jobs):
            if rate:
                await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
            request = c.GenerationRequested(job_id=c.new_job_id(), tenant=DEFAULT_TENANT, timings={"accepted_at": c.utcnow()},
                                            spec=c.ImageSpec(prompt=f"{tag} sword {i}", width=width, height=width))
            submitted[request.job_id] = time.monotonic()
            pending.append(await producer.send(topic, value=request.to_json_bytes(), key=request.job_id.encode(),
                                               headers=event_headers(request)))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def collect(kafka: KafkaSettings, topics: Topics, n: int, tag: str,
                  received: dict[str, tuple[float, c.GenerationCompleted]], ready: asyncio.Event) -> None:
    """Every completed event of this run (its prompts start with ``tag``), with when it arrived."""
    consumer = make_consumer(kafka, topics.name("generation.completed"), group_id=None)
    await consumer.start()
    ready.set()
    try:
        while len(received) < n:
            batches = await consumer.getmany(timeout_ms=500)
            now = time.monotonic()
            for record in (r for rs in batches.values() for r in rs):
                completed = c.decode(c.GenerationCompleted, record.value)
                if completed.spec.prompt.startswith(tag):
                    received.setdefault(completed.job_id, (now, completed))
    finally:
        await consumer.stop()


async def progress(n: int, submitted: dict, received: dict, done: asyncio.Event) -> None:
    started = time.monotonic()
    while not done.is_set():
        await asyncio.sleep(2)
        print(f"  {time.monotonic() - started:5.0f}s  submitted {len(submitted):5d}/{n}  completed {len(received):5d}/{n}",
              flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (``/proc/<pid>/stat``)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_profilers(pids: dict[str, int], out: Path) -> list[subprocess.Popen]:
    """py-spy (``pip install py-spy``) on each service, collapsed stacks to ``out/<service>.txt``."""
    out.mkdir(parents=True, exist_ok=True)
    return [subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "100",
                              "--nonblocking", "--output", str(out / f"{name}.txt")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, pid in pids.items()]


def stop_profilers(profilers: list[subprocess.Popen]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)
    for profiler in profilers:
        profiler.wait(60)


def seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    return (later - earlier).total_seconds() if later and earlier else None


async def one_run(args: argparse.Namespace, url: str, kafka: KafkaSettings, topics: Topics, tag: str,
                  jobs: list[int]) -> tuple[float, list[tuple[str, list[float]]]]:
    """Push ``jobs`` through the running pipeline: throughput, and the latencies of each stage and end to end."""
    submitted: dict[str, float] = {}
    received: dict[str, tuple[float, c.GenerationCompleted]] = {}
    ready, done = asyncio.Event(), asyncio.Event()
    collector = asyncio.create_task(collect(kafka, topics, len(jobs), tag, received, ready))
    await ready.wait()
    reporter = asyncio.create_task(progress(len(jobs), submitted, received, done))
    began = time.monotonic()
    if args.source == "kafka":
        await produce_all(kafka, topics, jobs, tag, args.size, args.rate, submitted)
    else:
        await submit_all(url, jobs, tag, args.size, args.clients, args.rate, submitted)
    submit_s = time.monotonic() - began
    try:
        await asyncio.wait_for(collector, timeout=max(300, len(jobs) * (args.latency + 1)))
    finally:
        done.set()
        await reporter
    elapsed = max(at for at, _ in received.values()) - began
    events = [completed for _, completed in received.values()]
    paths = {p: sum(e.path == p for e in events) for p in ("primary", "fallback")}
    rows = []
    for name, start, end in STAGES:
        values = [s for e in events if (s := seconds(getattr(e.timings, end), getattr(e.timings, start))) is not None]
        rows.append((name, values))
    rows.append(("end to end (subscriber)", [at - submitted[job] for job, (at, _) in received.items()]))
    throughput = len(events) / elapsed
    print(f"  {len(events)} jobs completed in {elapsed:.1f} s: {throughput:.1f} jobs/s; routed primary "
          f"{paths['primary']}, fallback {paths['fallback']}; submitting took {submit_s:.1f} s", flush=True)
    return throughput, rows


def print_table(runs: list[list[tuple[str, list[float]]]]) -> None:
    """Per stage, each percentile's median over the runs."""
    print(f"{'stage':26} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for k, (name, _) in enumerate(runs[0]):
        per_run = [[v * 1000 for v in rows[k][1]] for rows in runs]
        figures = [middle([percentile(ms, q) for ms in per_run]) for q in (50, 95, 99)]
        figures.append(middle([statistics.fmean(ms) for ms in per_run]))
        print(f"{name:26} " + " ".join(f"{f:9.1f}" for f in figures))


def middle(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


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
    parser.add_argument("-n", type=int, default=1000, help="jobs per run (default 1000)")
    parser.add_argument("--provider", choices=("procedural", "instant"), default="procedural",
                        help="procedural: render each icon; instant: pre-rendered distinct images, no render time")
    parser.add_argument("--latency", type=float, default=0.0, help="simulated procedural provider latency in seconds")
    parser.add_argument("--size", type=int, default=256, help="image width and height (default 256)")
    parser.add_argument("--rate", type=float, default=None, help="offered jobs/s (default: as fast as the clients go)")
    parser.add_argument("--runs", type=int, default=1, help="runs on one pipeline; medians are printed last")
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                        help="skip the bare-Kafka ceiling measured after the pipeline's runs")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record each service with py-spy during the first run, into this folder")
    parser.add_argument("--generator-concurrency", type=int, default=8, help="images in flight per generator")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP submitters")
    parser.add_argument("--source", choices=("http", "kafka"), default="http",
                        help="http: POST /v1/generations (through ingest); kafka: produce straight to "
                             "generation.requested, like the ceiling's source (ingest is left idle)")
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    if args.profile and shutil.which("py-spy") is None:
        parser.error("--profile records with py-spy, which is not on PATH: pip install py-spy")

    env, run_id, kafka, topic_settings = await fresh_run(args.partitions)
    prefix = topic_settings.prefix

    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    throughputs: list[float] = []
    all_rows: list[list[tuple[str, list[float]]]] = []
    cpu_ms: list[dict[str, float]] = []  # per run: CPU ms per job of each service
    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as state:
        providers: dict[str, str] = {}
        if args.provider == "instant":
            providers_file = Path(state) / "providers.yaml"
            providers_file.write_text(INSTANT_PROVIDERS)
            providers = {"FORGELINE_GENERATOR_PROVIDERS_FILE": str(providers_file)}
        pipeline = Pipeline(Path(state), env | providers | {
            "FORGELINE_TOPICS_PREFIX": prefix, "FORGELINE_REDIS_KEY_PREFIX": f"bench:{run_id}:",
            "FORGELINE_INGEST_PORT": str(port), "FORGELINE_INGEST_LOG_LEVEL": "WARNING",
            "FORGELINE_ROUTER_LOG_LEVEL": "WARNING", "FORGELINE_GENERATOR_LOG_LEVEL": "WARNING",
            "FORGELINE_STORAGE_LOG_LEVEL": "WARNING",
            "FORGELINE_GENERATOR_SIMULATED_LATENCY_S": str(args.latency),
            "FORGELINE_GENERATOR_CONCURRENCY": str(args.generator_concurrency),
        }, ingest_url=url)
        offered = f"offered {args.rate:.0f} jobs/s" if args.rate else "as fast as the clients go"
        print(f"pipeline on prefix {prefix}: {args.runs} × {args.n} jobs, {args.provider} provider, "
              f"{args.size}x{args.size}, provider latency {args.latency:.2f} s, generator concurrency "
              f"{args.generator_concurrency}, {args.clients} clients, {offered}", flush=True)
        await asyncio.to_thread(pipeline.start, None, lambda m: print(f"  {m}", flush=True))
        try:
            pids = {name: pipeline.process(name).pid() for name in SERVICES}
            # The shared components too (shared with whatever else uses this stack while it runs).
            pids |= {s.name: s.pid for s in devstack.status(devstack.DevStackSettings()) if s.pid}
            # And this script: its HTTP clients and subscriber share the two cores with the pipeline.
            pids["load generator"] = os.getpid()
            for run in range(args.runs):
                jobs = list(range(run * args.n, (run + 1) * args.n))
                services = {name: pid for name, pid in pids.items() if name in SERVICES}
                profilers = start_profilers(services, args.profile) if args.profile and run == 0 else []
                cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                try:
                    throughput, rows = await one_run(args, url, kafka, Topics(prefix), f"bench {run_id} run {run}",
                                                     jobs)
                finally:
                    stop_profilers(profilers)
                cpu_ms.append({name: (cpu_seconds(pid) - cpu_before[name]) * 1000 / args.n for name, pid in pids.items()})
                throughputs.append(throughput)
                all_rows.append(rows)
        finally:
            await asyncio.to_thread(pipeline.stop)
            admin = make_admin(kafka)
            await admin.start()
            await delete_topics(admin, topic_settings)
            await admin.close()

    ceilings = []
    ceiling_broker_ms = []  # per run: the broker's CPU ms per message of the ceiling
    if args.ceiling:
        print(f"ceiling: a bare aiokafka chain of the same four hops, {args.n} msgs, {offered}", flush=True)
        broker = pids.get("kafka")
        for run in range(args.runs):
            before = cpu_seconds(broker) if broker else 0.0
            figures = await kafka_ceiling.measure(kafka.bootstrap, args.n, args.rate, partitions=args.partitions)
            if broker:
                ceiling_broker_ms.append((cpu_seconds(broker) - before) * 1000 / args.n)
            print(f"  run {run + 1}: {kafka_ceiling.describe(figures)}", flush=True)
            ceilings.append(figures)

    label = f"median of {args.runs} runs" if args.runs > 1 else "one run"
    print(f"\nForgeline ({args.provider} provider, {label}): throughput {middle(throughputs):.1f} jobs/s")
    print_table(all_rows)
    per_process = {name: middle([run[name] for run in cpu_ms]) for name in cpu_ms[0]}
    services = sum(per_process.get(name, 0.0) for name in SERVICES)
    print("CPU per job: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in per_process.items())
          + f"; the services {services:.1f} ms")
    if args.profile:
        print(f"py-spy profiles of the first run (collapsed stacks): {args.profile}/<service>.txt")
    # What the shared components alone (the broker, Redis, the S3 server) leave room for on this machine's
    # cores, with the services, their clients and everything else taking no CPU at all.
    shared = sum(per_process.get(name, 0.0) for name in SHARED)
    cores = os.cpu_count() or 1
    bound = cores * 1000 / shared if shared else float("inf")
    print(f"the shared components alone ({' + '.join(SHARED)}: {shared:.1f} ms of CPU a job) leave room for at most "
          f"{bound:.0f} jobs/s on {cores} cores")
    if ceilings:
        ceiling = kafka_ceiling.median(ceilings)
        e2e_ms = [middle([percentile([v * 1000 for v in r[-1][1]], q) for r in all_rows]) for q in (50, 99)]
        print(f"\n{'figure':22} {'Forgeline':>12} {'ceiling':>12} {'ratio':>8}")
        print(f"{'msgs (jobs)/s':22} {middle(throughputs):12.1f} {ceiling.msgs_per_s:12.1f} "
              f"{middle(throughputs) / ceiling.msgs_per_s:8.2f}")
        print(f"{'e2e p50 ms':22} {e2e_ms[0]:12.1f} {ceiling.p50_ms:12.1f} {e2e_ms[0] / ceiling.p50_ms:8.2f}")
        print(f"{'e2e p99 ms':22} {e2e_ms[1]:12.1f} {ceiling.p99_ms:12.1f} {e2e_ms[1] / ceiling.p99_ms:8.2f}")
        if not args.rate:  # at an offered rate both carry what is offered
            print(f"{'that bound / ceiling':22} {bound:12.0f} {ceiling.msgs_per_s:12.1f} "
                  f"{bound / ceiling.msgs_per_s:8.2f}")
        if ceiling_broker_ms:
            print(f"{'broker CPU ms a job':22} {per_process.get('kafka', 0.0):12.1f} {middle(ceiling_broker_ms):12.1f} "
                  f"{per_process.get('kafka', 0.0) / middle(ceiling_broker_ms):8.2f}")


if __name__ == "__main__":
    asyncio.run(main())
