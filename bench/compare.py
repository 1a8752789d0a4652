"""Cost of a comparison: the perceptual comparer alone, the input checks, and the whole comparison path.

Three parts, in this order:

1. The perceptual comparer in this process, one comparison at a time (it decodes the pair's two
   images in two threads): latency per comparison at several image sizes, decoding included, on
   distinct pairs of procedural icons (same prompt, two seeds), next to the pure-Python comparer it
   replaced, read from git at :data:`BASELINE_COMMIT` and run on the same pairs in turn; the ratio is
   of the medians, in wall time and in this process's CPU time (every thread's; steadier when other
   work shares the cores). Then the same pairs with the target already prepared by an earlier
   comparison (:class:`~services.comparer.perceptual.PreparedImages`, as the comparer service keeps
   them). Decoding the two PNGs with the comparer's own decoder (libpng for plain PNGs), one after the
   other, is timed too: this comparer's CPU floor.
2. The input checks: ``decode_data_url`` (base64, magic bytes, header checks, full decode) of a PNG.
3. Its own ingest and comparer processes on a fresh topic prefix against the running local stack
   (``forgeline dev up``): N distinct pairs (so no cache hits) through ``POST /v1/comparisons?wait=60``
   with bounded concurrency, then the same N again, which the comparer answers from its cache.
   ``--method vlm`` points the comparer at the fake VLM on loopback (which itself scores with the
   perceptual comparer, in this process's threads). End to end is from sending the request to
   having its answer; ``response_time_ms`` is the comparer's own time for the judgement.

    python bench/compare.py                            # everything, perceptual comparer in the pipeline
    python bench/compare.py -n 100 --method vlm
    python bench/compare.py --skip-pipeline --local-n 50

The last lines are a summary table of every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from services import devstack
from services.common.contracts import ImageSpec
from services.common.images import decode_data_url
from services.common.kafka import make_admin
from services.common.settings import KafkaSettings, TopicSettings
from services.common.topics import create_topics, delete_topics
from services.comparer import perceptual
from services.devstack.pipeline import Pipeline
from services.devstack.process import free_ports, log_tail
from services.fakeproviders import openai_chat
from services.fakeproviders.base import FakeProvider
from services.fakeproviders.server import serve_fake
from services.providers.procedural import render_icon

SERVICES = ("comparer", "ingest")
BASELINE_COMMIT = "2d774104e95137a363a8152eba64fda0d8a75f96"  # the last commit with the pure-Python comparer
FAKE_VLM_KEY = "sk-bench-fake-vlm-key-0001"
PROMPTS = ("flaming obsidian greatsword", "frost potion in a round flask", "oak shield with iron rim",
           "glowing amethyst ring", "leather boots of speed", "ancient scroll with wax seal")


class Counter:
    """A progress line: rewritten in place on a terminal, a new line every few seconds in a log."""

    def __init__(self, every_s: float = 2.0) -> None:
        self._tty = sys.stdout.isatty()
        self._every_s = every_s
        self._last = 0.0

    def show(self, line: str) -> None:
        if self._tty:
            print(f"\r{line}\x1b[K", end="", flush=True)
        elif time.monotonic() - self._last >= self._every_s:
            self._last = time.monotonic()
            print(line, flush=True)

    def done(self, line: str) -> None:
        print(f"\r{line}\x1b[K" if self._tty else line, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def data_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def pair(run_id: str, i: int, size: int) -> tuple[bytes, bytes, str]:
    """A distinct (target, generated, prompt): one prompt drawn with two seeds, like two tries at one icon."""
    prompt = f"{PROMPTS[i % len(PROMPTS)]} {run_id} {i}"
    target = render_icon(ImageSpec(prompt=prompt, width=size, height=size, seed=2 * i))
    generated = render_icon(ImageSpec(prompt=prompt, width=size, height=size, seed=2 * i + 1))
    return target, generated, prompt


@dataclass
class Row:
    """One line of the summary: a name, latencies in ms, and a rate per second when it has one."""

    name: str
    ms: list[float]
    rate: float | None = None
    note: str = ""


# --- 1 and 2: in this process -----------------------------------------------------------------

def baseline_comparer() -> types.ModuleType:
    """The hand-written comparer this one replaced (pure Python over lists), read from git at BASELINE_COMMIT."""
    root = Path(__file__).resolve().parent.parent
    try:
        text = subprocess.run(["git", "-C", str(root), "show", f"{BASELINE_COMMIT}:services/comparer/perceptual.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"cannot read the baseline comparer from git ({BASELINE_COMMIT[:10]}): {exc}") from None
    module = sys.modules["perceptual_baseline"] = types.ModuleType("perceptual_baseline")  # dataclasses look here
    exec(compile(text, f"perceptual_baseline@{BASELINE_COMMIT[:10]}.py", "exec"), module.__dict__)
    return module


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU milliseconds of one call; on a shared machine the CPU time is the steadier of the two."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000


def decode_pair(target: bytes, generated: bytes) -> None:
    for role, raw in (("target", target), ("generated", generated)):
        perceptual._decode(raw, role)


def bench_perceptual(sizes: list[int], n: int, run_id: str) -> list[Row]:
    print(f"\n1. perceptual comparer alone against the pure-Python one it replaced ({BASELINE_COMMIT[:10]}): "
          f"{n} distinct PNG pairs per size, one at a time, decoding included, the two taking turns", flush=True)
    baseline = baseline_comparer()
    warm = pair(run_id, 10**6, 64)
    for comparer in (perceptual, baseline):
        comparer.compare(*warm)  # first call pays for lazy imports
    rows = []
    for size in sizes:
        wall: dict[str, list[float]] = {"now": [], "known": [], "before": [], "decode": []}
        cpu: dict[str, list[float]] = {name: [] for name in wall}
        counter = Counter()
        for i in range(n):
            target, generated, prompt = pair(run_id, i, size)
            prepared = perceptual.PreparedImages()
            prepared.pair(target, pair(run_id, n + i, size)[1])  # the target compared once before, untimed
            for name, work in (("now", partial(perceptual.compare, target, generated, prompt)),
                               ("known", partial(perceptual.compare, target, generated, prompt, prepared=prepared)),
                               ("before", partial(baseline.compare, target, generated, prompt)),
                               ("decode", partial(decode_pair, target, generated))):
                wall_ms, cpu_ms = timed(work)
                wall[name].append(wall_ms)
                cpu[name].append(cpu_ms)
            counter.show(f"  {size}²: {i + 1:4d}/{n}")
        now, known, before, decode = (statistics.median(wall[name]) for name in ("now", "known", "before", "decode"))
        now_cpu, known_cpu, before_cpu, decode_cpu = (statistics.median(cpu[name])
                                                      for name in ("now", "known", "before", "decode"))
        rows.append(Row(f"perceptual {size}²", wall["now"], rate=1000 / statistics.fmean(wall["now"]),
                        note=f"{before / now:.1f}× faster than before ({before:.1f} ms); CPU {now_cpu:.1f} ms, "
                             f"{before_cpu / now_cpu:.1f}× less than before ({before_cpu:.1f} ms)"))
        rows.append(Row(f"perceptual {size}², target known", wall["known"], rate=1000 / statistics.fmean(wall["known"]),
                        note=f"the target prepared by an earlier comparison: {before / known:.1f}× faster than "
                             f"before; CPU {known_cpu:.1f} ms, {before_cpu / known_cpu:.1f}× less"))
        rows.append(Row(f"perceptual {size}², before", wall["before"], rate=1000 / statistics.fmean(wall["before"])))
        rows.append(Row(f"decoding the pair {size}²", wall["decode"],
                        note=f"the comparer's decoder alone, one after the other (CPU {decode_cpu:.1f} ms): this "
                             f"comparer cannot use less CPU than before / {before_cpu / decode_cpu:.1f}"))
        counter.done(f"  {size}²: p50 {now:7.1f} ms, before {before:7.1f} ms: {before / now:5.1f}× faster "
                     f"({before_cpu / now_cpu:.1f}× in CPU); decoding the pair alone {decode:.1f} ms")
    return rows


def bench_decode(sizes: list[int], n: int, run_id: str) -> list[Row]:
    print(f"\n2. input checks: decode_data_url, {n} runs per size", flush=True)
    rows = []
    for size in sizes:
        target, _, _ = pair(run_id, 0, size)
        url = data_url(target)
        decode_data_url(url, field="bench")
        ms = []
        for _ in range(n):
            started = time.perf_counter()
            decode_data_url(url, field="bench")
            ms.append((time.perf_counter() - started) * 1000)
        rows.append(Row(f"decode_data_url {size}²", ms, note=f"{len(target) // 1024} KiB PNG"))
        print(f"  {size}² ({len(target) // 1024} KiB PNG): p50 {percentile(ms, 50):6.2f} ms  "
              f"p95 {percentile(ms, 95):6.2f} ms", flush=True)
    return rows


# --- 3: through the pipeline ------------------------------------------------------------------

@dataclass
class Pass:
    """What one pass of N requests came back with."""

    latency_ms: list[float] = field(default_factory=list)
    comparer_ms: list[float] = field(default_factory=list)
    methods: dict[str, int] = field(default_factory=dict)
    cached: int = 0
    unfinished: int = 0  # 202: not done within ?wait=
    failed: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def done(self) -> int:
        return len(self.latency_ms) + self.unfinished + len(self.failed)


async def run_pass(http: httpx.AsyncClient, bodies: list[dict], concurrency: int, label: str) -> Pass:
    result = Pass()
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker() -> None:
        while not queue.empty():
            body = queue.get_nowait()
            started = time.monotonic()
            try:
                response = await http.post("/v1/comparisons", params={"wait": 60}, json=body)
            except httpx.HTTPError as exc:
                result.failed.append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed_ms = (time.monotonic() - started) * 1000
            view = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            if response.status_code == 202:
                result.unfinished += 1
            elif response.status_code != 200 or view.get("status") != "completed":
                result.failed.append(f"HTTP {response.status_code}: {response.text[:200]}")
            else:
                result.latency_ms.append(elapsed_ms)
                result.comparer_ms.append(view["result"]["response_time_ms"])
                method = view["result"]["method"]
                result.methods[method] = result.methods.get(method, 0) + 1
                result.cached += bool(view["cached"])

    counter = Counter()

    async def progress(began: float) -> None:
        while True:
            await asyncio.sleep(1)
            counter.show(f"  {label}: {time.monotonic() - began:5.0f}s  answered {result.done:5d}/{len(bodies)}  "
                         f"cached {result.cached}  failed {len(result.failed)}")

    began = time.monotonic()
    reporter = asyncio.create_task(progress(began))
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        reporter.cancel()
    result.elapsed_s = time.monotonic() - began
    counter.done(f"  {label}: {result.elapsed_s:5.1f}s  answered {result.done:5d}/{len(bodies)}  "
                 f"cached {result.cached}  failed {len(result.failed)}  unfinished {result.unfinished}")
    for problem in result.failed[:3]:
        print(f"    {problem}", flush=True)
    return result


@asynccontextmanager
async def fresh_topics(kafka: KafkaSettings, topics: TopicSettings) -> AsyncIterator[None]:
    """The pipeline's topics, created for the run and deleted after it, whatever happens."""
    admin = make_admin(kafka)
    await admin.start()
    try:
        await create_topics(admin, topics)
    finally:
        await admin.close()
    try:
        yield
    finally:
        admin = make_admin(kafka)
        await admin.start()
        try:
            await delete_topics(admin, topics)
        finally:
            await admin.close()


async def bench_pipeline(args: argparse.Namespace, run_id: str) -> list[Row]:
    stack = devstack.DevStackSettings()
    if not all(s.answers for s in devstack.status(stack)):
        raise SystemExit("the local stack is not running: start it with `forgeline dev up` (or `make up`)")
    print(f"\n3. through the pipeline ({', '.join(SERVICES)}), method {args.method}: {args.n} distinct pairs "
          f"at {args.size}², {args.concurrency} in flight, comparer concurrency {args.comparer_concurrency}",
          flush=True)
    began = time.monotonic()
    bodies = []
    counter = Counter()
    for i in range(args.n + 1):  # the extra one warms the pipeline up
        target, generated, prompt = pair(run_id, i, args.size)
        bodies.append({"target_image": data_url(target), "generated_image": data_url(generated),
                       "original_prompt": prompt})
        counter.show(f"  rendering pairs: {i + 1:5d}/{args.n + 1}")
    counter.done(f"  rendered {args.n + 1} pairs in {time.monotonic() - began:.1f} s")
    warmup, bodies = bodies[0], bodies[1:]

    env = devstack.env(stack)
    prefix = f"bench-{run_id}"
    kafka = KafkaSettings(bootstrap=env["FORGELINE_KAFKA_BOOTSTRAP"])
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    vlm_app = openai_chat.create_app(FakeProvider("vlm")) if args.method == "vlm" else None
    async with (fresh_topics(kafka, TopicSettings(prefix=prefix, partitions=args.partitions)),
                serve_fake(vlm_app) if vlm_app else nullcontext(None) as vlm_url):
        comparer_env = {"FORGELINE_COMPARER_LOG_LEVEL": "WARNING",
                        "FORGELINE_COMPARER_CONCURRENCY": str(args.comparer_concurrency)}
        if vlm_url is not None:
            comparer_env |= {"FORGELINE_COMPARER_VLM_BASE_URL": vlm_url, "FORGELINE_COMPARER_VLM_KEYS": FAKE_VLM_KEY}
        with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as state:
            pipeline = Pipeline(Path(state), env | {
                "FORGELINE_TOPICS_PREFIX": prefix, "FORGELINE_TOPICS_PARTITIONS": str(args.partitions),
                "FORGELINE_REDIS_KEY_PREFIX": f"bench:{run_id}:", "FORGELINE_INGEST_HOST": "127.0.0.1",
                "FORGELINE_INGEST_PORT": str(port), "FORGELINE_INGEST_LOG_LEVEL": "WARNING",
            }, per_service_env={"comparer": comparer_env}, ingest_url=url)
            # A thread cannot be cancelled: on Ctrl-C, let it finish starting before everything is stopped.
            starting = asyncio.ensure_future(
                asyncio.to_thread(pipeline.start, SERVICES, lambda m: print(f"  {m}", flush=True)))
            try:
                await asyncio.shield(starting)
                limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
                async with httpx.AsyncClient(base_url=url, timeout=90, limits=limits) as http:
                    started = time.monotonic()
                    warm = await run_pass(http, [warmup], 1, "warm-up")
                    if warm.failed or warm.unfinished:
                        raise SystemExit(f"the warm-up comparison did not complete; comparer log:\n"
                                         f"{log_tail(pipeline.process('comparer').log_path, 30)}")
                    print(f"  warm-up comparison answered after {time.monotonic() - started:.1f} s", flush=True)
                    fresh = await run_pass(http, bodies, args.concurrency, "distinct pairs")
                    again = await run_pass(http, bodies, args.concurrency, "same pairs again")
            finally:
                print("  stopping the pipeline", flush=True)
                await asyncio.wait([starting])
                await asyncio.to_thread(pipeline.stop, SERVICES)

    if vlm_app is not None and fresh.methods.get("vlm", 0) < len(fresh.latency_ms):
        print(f"  note: {len(fresh.latency_ms) - fresh.methods.get('vlm', 0)} comparisons fell back to perceptual",
              flush=True)
    name = f"pipeline {args.method} {args.size}²"
    return [
        Row(f"{name}, end to end", fresh.latency_ms, rate=len(fresh.latency_ms) / fresh.elapsed_s,
            note=f"{len(fresh.latency_ms)} ok, {fresh.cached} cached, {len(fresh.failed)} failed, "
                 f"{fresh.unfinished} unfinished"),
        Row(f"{name}, comparer's own time", fresh.comparer_ms, note=f"methods {fresh.methods}"),
        Row(f"{name}, cache hits", again.latency_ms, rate=len(again.latency_ms) / again.elapsed_s,
            note=f"{again.cached} cached of {len(again.latency_ms)} ok, {len(again.failed)} failed"),
    ]


# --- summary ----------------------------------------------------------------------------------

def print_summary(rows: list[Row]) -> None:
    width = max(len(r.name) for r in rows)
    print(f"\n{'measure':{width}} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9} {'per s':>8}  note")
    for row in rows:
        if not row.ms:
            print(f"{row.name:{width}} {0:5d} {'-':>9} {'-':>9} {'-':>9} {'-':>8}  {row.note}")
            continue
        rate = f"{row.rate:8.1f}" if row.rate is not None else f"{'':8}"
        print(f"{row.name:{width}} {len(row.ms):5d} {percentile(row.ms, 50):9.2f} {percentile(row.ms, 95):9.2f} "
              f"{percentile(row.ms, 99):9.2f} {rate}  {row.note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="comparisons through the pipeline (default 200)")
    parser.add_argument("--method", choices=("perceptual", "vlm"), default="perceptual",
                        help="the comparer's method in the pipeline; vlm uses the fake VLM on loopback")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--size", type=int, default=512, help="image side in the pipeline (default 512)")
    parser.add_argument("--comparer-concurrency", type=int, default=4, help="comparisons in flight in the comparer")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--local-n", type=int, default=20, help="pairs per size for the comparer alone (default 20)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048],
                        help="image sides for the comparer alone")
    parser.add_argument("--decode-n", type=int, default=50, help="runs per size of decode_data_url (default 50)")
    parser.add_argument("--skip-local", action="store_true", help="only the pipeline")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the in-process parts")
    args = parser.parse_args()

    run_id = uuid.uuid4().hex[:8]
    rows: list[Row] = []
    if not args.skip_local:
        rows += bench_perceptual(args.sizes, args.local_n, run_id)
        rows += bench_decode([512, 2048], args.decode_n, run_id)
    if not args.skip_pipeline:
        rows += asyncio.run(bench_pipeline(args, run_id))
    print_summary(rows)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
