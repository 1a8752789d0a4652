"""What every Forgeline process does the same way: logging, signals, metrics, the loop's lifetime.

A service's ``serve(settings, infra, stop)`` builds its handler on the process's
:class:`~services.common.bootstrap.Infra` and runs until ``stop`` is set. ``run_service`` is
what ``forgeline run <service>`` calls: it sets up logging and the metrics and health endpoint,
turns SIGTERM / SIGINT into ``stop``, and runs ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from logging.handlers import QueueHandler
from typing import TextIO, TypeVar

from aiokafka import ConsumerRecord

from services.common import tracing
from services.common.backoff import RepeatFilter
from services.common.bootstrap import Infra
from services.common.consumer import ConsumerLoop, LoopSettings, Outcome
from services.common.contracts import Event, decode
from services.common.health import Readiness, start_health_server

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


class LineBatch(logging.Handler):
    """Formats each record into a batch of lines, written to ``stream`` in one write at ``flush``.

    Python's stderr is line-buffered, so a ``StreamHandler`` costs a ``write`` system call per line:
    under load, ingest's access log alone was a tenth of its CPU. :class:`BatchingListener` flushes
    each round's records at once.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:  # noqa: BLE001 — logging's contract: a bad record is reported, never raised
            self.handleError(record)

    def flush(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stderr loses the lines, not the process
            self.stream.write(text)
            self.stream.flush()


class BatchingListener:
    """The log writer's thread: every ``interval_s`` it takes all the records queued since, hands
    them to its handlers, and flushes them (one write for all of them, with :class:`LineBatch`).

    It sleeps between rounds rather than waiting on the queue. A thread blocked in ``get`` is woken by
    each ``put``, and each wake-up is a hand-over of the GIL between two threads: ingest driven in
    process spent about 130 µs of CPU per access-log line on it, against 185 µs for the rest of a
    cached request; under wrk (``bench/cache_hit.py``) its CPU per cached request fell from 367 to
    293 µs with this writer. A line now waits at most ``interval_s`` to be written; ``stop`` writes
    what is left.
    """

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord], *handlers: logging.Handler,
                 interval_s: float = 0.05) -> None:
        self.records = records
        self.handlers = handlers
        self.interval_s = interval_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write every record queued so far, then end the thread."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join()
        self._thread = None
        self._stopping.clear()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        handled = False
        while True:
            try:
                record = self.records.get_nowait()
            except queue.Empty:
                break
            handled = True
            for handler in self.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
        if handled:
            for handler in self.handlers:
                handler.flush()


def configure_logging(level: str, service: str, stream: TextIO | None = None) -> BatchingListener:
    """Log lines to ``stream`` (stderr), written by a thread of their own; returns it, to ``stop()`` (and
    flush) at the end.

    The event loop only puts each record on a queue: it never waits on stderr (a full pipe to the
    container runtime, a slow terminal), and ingest's access-log line per request costs no write
    and no timestamp formatting on the loop. The thread writes what was queued in one go, every 50 ms.
    """
    writer = LineBatch(stream or sys.stderr)
    writer.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = QueueHandler(records)
    # The queue carries the message alone (with its traceback): without a formatter of its own, basicConfig
    # would give it "LEVEL:name:message", and every line would say its level and logger twice.
    handler.setFormatter(logging.Formatter("%(message)s"))
    # aiokafka logs every coordinator hiccup at ERROR during normal rebalances, and every reconnect
    # attempt while a broker is down: keep them visible, but one line per message per 30 s.
    handler.addFilter(RepeatFilter(("aiokafka",), every_s=30.0))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    listener = BatchingListener(records, writer)
    listener.start()
    return listener


def run_service(
    service: str,
    serve: Callable[[asyncio.Event], Awaitable[None]],
    *,
    log_level: str = "INFO",
    metrics_port: int | None = None,
    readiness: Readiness | None = None,
    shutdown_grace_s: float = 35.0,
    traces: tracing.TracingSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Run one service until SIGTERM / SIGINT; the process's entrypoint.

    ``metrics_port``: serve ``/metrics``, ``/healthz`` and ``/readyz`` (from ``readiness``) there.
    ``shutdown_grace_s``: after the signal, how long ``serve`` may take to finish its in-flight work
    before it is cancelled (a service still waiting for its dependencies has none, and just stops).
    ``traces``: export this process's spans when they turn tracing on (``environ``: the OTEL_* variables).
    """
    log_writer = configure_logging(log_level, service)
    if traces is not None:
        tracing.start(service, traces, environ or {})
    if metrics_port:
        start_health_server(metrics_port, readiness or Readiness())

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("starting")
        await _serve_until_stopped(serve(stop), stop, shutdown_grace_s)
        log.info("stopped")

    try:
        asyncio.run(main())
    finally:
        tracing.stop()  # the spans still buffered
        log_writer.stop()  # the lines still queued


async def _serve_until_stopped(serving: Awaitable[None], stop: asyncio.Event, grace_s: float) -> None:
    """Await ``serving``; once ``stop`` is set, give it ``grace_s`` to return, then cancel it.

    A service still waiting for its dependencies at start-up (a broker that is not there) has
    nothing to finish: a SIGTERM ends it within the grace period instead of never.
    """
    task = asyncio.ensure_future(serving)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:
                log.warning("still busy %.0fs after the stop signal; cancelling", grace_s)
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        stopper.cancel()


async def run_until_stopped(loop: ConsumerLoop, stop: asyncio.Event, *companions: Awaitable[None]) -> None:
    """Run ``loop`` (and background ``companions``) until ``stop``; then let the loop finish cleanly.

    If the loop or a companion dies, the others are stopped and the error propagates, so the
    process exits non-zero and its supervisor (Kubernetes, the dev stack) restarts it.
    """
    main = asyncio.create_task(loop.run(), name="consumer-loop")
    others = [asyncio.create_task(c) for c in companions]
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait({main, stopper, *others}, return_when=asyncio.FIRST_COMPLETED)
        loop.stop()
        await main
        for task in done:
            if task is not stopper and task is not main and task.exception():
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in (stopper, *others):
            task.cancel()
        await asyncio.gather(stopper, *others, return_exceptions=True)


async def consume(infra: Infra, stop: asyncio.Event, settings: LoopSettings, model: type[E],
                  handle: Callable[[E], Awaitable[Outcome]], *companions: Awaitable[None]) -> None:
    """Run ``handle`` over every record of ``settings.topics``, decoded as ``model``, until ``stop``.

    A record that does not decode raises ``ContractError``, which the loop dead-letters.
    """

    async def on_record(record: ConsumerRecord) -> Outcome:
        return await handle(decode(model, record.value))

    loop = await infra.consumer_loop(on_record, settings)
    infra.readiness.set("kafka", True)  # connected, about to join the group
    await run_until_stopped(loop, stop, *companions)
