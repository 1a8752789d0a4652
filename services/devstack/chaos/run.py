"""One chaos run: a private stack, the real pipeline, N jobs, faults at seeded times, then the audit.

The run owns its stack (its own state folder and free ports, Kafka's jars from the shared cache):
it kills brokers and Redis, which nobody else's stack should suffer. Everything it started is
stopped at the end, whatever happened.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.errors import KafkaError

from services import devstack
from services.common.kafka import make_admin, make_consumer
from services.common.settings import KafkaSettings, TopicSettings
from services.common.spend_journal import journal_namespace
from services.common.topics import Topics, create_topics
from services.devstack.chaos import audit
from services.devstack.chaos.faults import (
    FaultRecord,
    Injector,
    Supervisor,
    Targets,
    Timings,
    default_faults,
    schedule,
)
from services.devstack.chaos.load import Load
from services.devstack.chaos.report import ChaosReport, build_report
from services.devstack.chaos.watch import WORKERS, Sampler, first_after, monotonic_clock, moved_again
from services.devstack.cluster import KafkaCluster
from services.devstack.pipeline import SERVICE_NAMES, Pipeline
from services.devstack.process import free_ports, port_free
from services.devstack.s3 import s3_settings
from services.devstack.stack import components
from services.fakeproviders.server import PROTOCOLS, fake_urls

PREFIX = "chaos"
REDIS_PREFIX = "chaos:"


@dataclass
class ChaosConfig:
    n: int = 600
    rate: float = 30.0
    seed: int = 1
    faults: list[str] | None = None  # default: every fault once (default_faults(brokers))
    timings: Timings = field(default_factory=Timings)
    window_s: float | None = None  # faults fall in this many seconds from the start (default: the load's length)
    drain_s: float = 180.0  # after load and faults, how long to wait for the last terminal events
    give_up_s: float = 120.0  # a client retries one request this long before it gives up
    partitions: int = 6
    brokers: int = 1  # 3: a KRaft cluster, topics with replication factor 3 and min.insync.replicas 2
    state_dir: Path | None = None  # default: a temporary folder, removed afterwards
    progress: Callable[[str], None] = print

    def __post_init__(self) -> None:
        if self.faults is None:
            self.faults = default_faults(self.brokers)
        schedule(self.faults, 1.0, self.seed)  # an unknown fault name fails here, before any process starts


def private_stack(state_dir: Path, brokers: int = 1) -> devstack.DevStackSettings:
    """Stack settings on free loopback ports (the fakes need six in a row; a cluster's brokers two
    each, in a row) under ``state_dir``."""
    redis, s3, ingest = free_ports(3)
    kafka = _free_run(2 * brokers) if brokers > 1 else free_ports(2)[0]
    controller = kafka + 1 if brokers > 1 else free_ports(1)[0]
    return devstack.DevStackSettings(
        state_dir=state_dir, kafka_port=kafka, kafka_controller_port=controller, redis_port=redis, s3_port=s3,
        kafka_brokers=brokers, ingest_port=ingest, fake_providers_port=_free_run(len(PROTOCOLS)),
        # Both paths busy: a free path quick enough to take a share, the rest overflowing to the paid one.
        primary_latency_s=0.2, primary_concurrency=4, depth_high=8, depth_low=4,
    )


def _free_run(count: int) -> int:
    draw = random.Random()
    for _ in range(200):
        base = draw.randrange(20000, 60000 - count)
        if all(port_free("127.0.0.1", base + i) for i in range(count)):
            return base
    raise devstack.DevStackError(f"no {count} free ports in a row on 127.0.0.1")


class Terminals:
    """Follows the terminal topics while the run goes: which accepted jobs have ended, and when events came."""

    def __init__(self, kafka: KafkaSettings, topics: Topics, clock: Callable[[], float]) -> None:
        self.kafka, self.topics, self.clock = kafka, topics, clock
        self.jobs: set[str] = set()
        self.arrivals: list[float] = []

    async def run(self, ready: asyncio.Event) -> None:
        consumer = make_consumer(self.kafka, self.topics.name("generation.completed"),
                                 self.topics.name("generation.failed"), group_id=None)
        await consumer.start()
        ready.set()
        try:
            while True:
                try:
                    batches = await consumer.getmany(timeout_ms=500)
                except KafkaError:  # the broker is being restarted: the consumer reconnects by itself
                    await asyncio.sleep(0.5)
                    continue
                for record in (r for rs in batches.values() for r in rs):
                    self.jobs.add(record.key.decode())
                    self.arrivals.append(self.clock())
        finally:
            await consumer.stop()


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    say = config.progress
    owned = config.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="forgeline-chaos-")) if owned else config.state_dir
    assert state_dir is not None
    settings = private_stack(state_dir, config.brokers)
    pieces = {c.name: c for c in components(settings)}
    pipeline = devstack.pipeline(settings, {
        "FORGELINE_TOPICS_PREFIX": PREFIX, "FORGELINE_TOPICS_PARTITIONS": str(config.partitions),
        "FORGELINE_REDIS_KEY_PREFIX": REDIS_PREFIX,
    })
    try:
        say(f"chaos: private stack under {state_dir}")
        await asyncio.to_thread(devstack.up, settings, None, lambda m: say(f"  {m}"))
        kafka = KafkaSettings(bootstrap=devstack.env(settings)["FORGELINE_KAFKA_BOOTSTRAP"])
        admin = make_admin(kafka)
        await admin.start()
        try:
            await create_topics(admin, KafkaCluster(settings).topic_settings(
                TopicSettings(prefix=PREFIX, partitions=config.partitions)))
        finally:
            await admin.close()
        await asyncio.to_thread(pipeline.start, None, lambda m: say(f"  {m}"))
        return await _run(config, settings, pieces, pipeline, kafka)
    finally:
        say("chaos: stopping the pipeline and the stack")
        await asyncio.to_thread(pipeline.stop)
        await asyncio.to_thread(devstack.down, settings)
        if owned:
            shutil.rmtree(state_dir, ignore_errors=True)


async def _run(config: ChaosConfig, settings: devstack.DevStackSettings, pieces: dict,
               pipeline: Pipeline, kafka: KafkaSettings) -> ChaosReport:
    say, clock = config.progress, monotonic_clock()
    run_id = uuid.uuid4().hex[:6]
    topics, urls = Topics(PREFIX), fake_urls(settings.host, settings.fake_providers_port)
    ingest = devstack.ingest_url(settings)
    window = config.window_s or config.n / config.rate
    plan = schedule(config.faults, window, config.seed)
    say(f"chaos: run {run_id}: {config.n} jobs at {config.rate:g}/s, seed {config.seed}; faults at "
        + ", ".join(f"{f.name} +{f.at_s:.0f}s" for f in plan))
    def restart_brokers() -> None:
        devstack.down(settings, ["kafka"])
        time.sleep(config.timings.downtime_s)
        devstack.up(settings, ["kafka"])

    injector = Injector(Targets(pieces, pipeline, urls, config.timings, config.seed,
                                restart_brokers if config.brokers > 1 else None), clock)
    load = Load(ingest, run_id, config.n, config.rate, seed=config.seed, give_up_s=config.give_up_s)
    terminals, sampler = Terminals(kafka, topics, clock), Sampler(pipeline, clock)
    ready = asyncio.Event()
    supervisor = Supervisor(pipeline, injector, SERVICE_NAMES)

    async def supervise() -> None:
        while True:
            await asyncio.to_thread(supervisor.watch_once)
            await asyncio.sleep(1.0)

    background = [asyncio.create_task(terminals.run(ready)), asyncio.create_task(sampler.run()),
                  asyncio.create_task(supervise())]
    await ready.wait()
    began = time.monotonic()

    async def inject(record: FaultRecord) -> None:
        await asyncio.sleep(max(0.0, record.at_s - clock()))
        say(f"  {clock():6.1f}s  fault {record.name}")
        await asyncio.to_thread(injector.run, record)
        say(f"  {clock():6.1f}s  fault {record.name} done: {record.error or record.detail}")

    reporter = asyncio.create_task(_report_progress(say, clock, load, terminals, plan))
    try:
        await asyncio.gather(load.run(), *(inject(record) for record in plan))
        deadline = time.monotonic() + config.drain_s
        while set(load.accepted()) - terminals.jobs and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
    finally:
        reporter.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(reporter, *background, return_exceptions=True)
    elapsed = time.monotonic() - began
    say(f"chaos: load and faults done after {elapsed:.0f} s; auditing Kafka, HTTP, providers and the ledger")
    for record in plan:
        if record.repaired_s is None:
            continue
        stages = [record.name.split(":", 1)[1]] if record.name.startswith("kill:") else [*WORKERS, "ingest"]
        accepted = sorted(s.accepted_at - began for s in load.submissions if s.accepted_at is not None)
        record.recovery_s = {stage: first_after(accepted, record.repaired_s) if stage == "ingest"
                             else moved_again(sampler.samples[stage], record.repaired_s) for stage in stages}
        record.terminal_resumed_s = first_after(sorted(terminals.arrivals), record.repaired_s)
    kafka_record = await audit.kafka_record(kafka, topics)
    accepted_jobs = list(load.accepted())
    disagreements, stuck = await audit.http_disagreements(ingest, kafka_record.terminal,
                                                          sorted(set(accepted_jobs) | _run_jobs(kafka_record)))
    settled = await audit.settled_calls(s3_settings(settings), f"billing/{journal_namespace(REDIS_PREFIX)}")
    paid = audit.paid(await audit.charges(urls, run_id), settled, kafka_record)
    logs = {s.name: s.log_path.stat().st_size for s in pipeline.status() if s.log_path.exists()}
    logs |= {c.name: c.process.log_path.stat().st_size for c in pieces.values() if c.process.log_path.exists()}
    return build_report(config=config, run_id=run_id, elapsed_s=elapsed, load=load, record=kafka_record,
                        disagreements=disagreements, stuck=stuck, paid=paid, faults=plan, log_bytes=logs,
                        crashes=supervisor.crashes)


def _run_jobs(record: audit.KafkaRecord) -> set[str]:
    return {job for jobs in record.requested.values() for job in jobs}


async def _report_progress(say, clock, load: Load, terminals: Terminals, plan: list[FaultRecord]) -> None:
    while True:
        await asyncio.sleep(5)
        accepted = load.accepted()
        sent = sum(1 for s in load.submissions if s.statuses)
        done = sum(1 for f in plan if f.began_s is not None and (f.repaired_s is not None or f.error))
        say(f"  {clock():6.1f}s  sent {sent}/{load.n}  accepted {len(accepted)}  "
            f"terminal {len(terminals.jobs & set(accepted))}  faults {done}/{len(plan)}")

