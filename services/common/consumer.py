"""The consumer loop every Forgeline worker runs: at-least-once, concurrent, in-order commits.

How a record travels::

    fetch ──▶ handler(record) ──▶ Outcome(outputs) ──▶ produce + wait for acks ──▶ on_acked() ──▶ done
                 │ Permanent                        ──▶ <topic>.dlq (reason in headers) ──▶ done
                 │ a dependency is down / Retryable ──▶ wait it out: back off, hold the fetch, not ready
                 │ any other exception (a bug)      ──▶ retry with backoff, then .dlq ──▶ done

- Up to ``concurrency`` records are in flight at once, across partitions.
- The offset committed for a partition is the lowest offset still in flight there (or one past
  the highest done): never past a record whose outputs are not acknowledged. A crash replays
  from there, so handlers make every effect safe to repeat.
- A poison record never blocks its partition: it goes to the dead-letter topic with the reason,
  and the loop moves on. A **dependency outage is not poison**: a record that failed because
  Redis is restarting, the broker is moving a leader or S3 is slow
  (:func:`services.common.outages.is_outage`) is retried for as long as the outage lasts, the
  service reports not ready (``/readyz``, ``forgeline_ready``) and fetches nothing new
  (its partitions are paused, while the loop keeps polling so the group keeps it); the first
  success makes it ready again.
- Once a record's outputs are acknowledged it is never dead-lettered: a failing ``on_acked`` is
  retried, and the dead-letter send itself is retried until the broker takes it.

Errors a handler raises, and what the loop does (the classes are in :mod:`services.common.errors`;
the loop looks at the two bases, and at :mod:`services.common.outages` for third-party errors):

    Permanent           can never succeed (a ContractError, …)      → dead-letter at once
    Retryable / outage  a dependency failed (S3, Redis, no key, …)  → retry until it works (or stop)
    any other Exception a bug, a surprise, an untranslated error    → retry ``max_attempts``, then dead-letter
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka import (
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge, Histogram

from services.common import tracing
from services.common.backoff import Backoff, RateLimitedLog
from services.common.contracts import Event
from services.common.errors import Permanent, Retryable
from services.common.health import Readiness
from services.common.kafka import DeadLetter, Producer, event_headers, send_to_dlq
from services.common.outages import describe_outage
from services.common.topics import DLQ_SUFFIX

log = logging.getLogger(__name__)

T = TypeVar("T")

RECORDS = Counter("forgeline_records_total", "Records processed, by consumer group and outcome.",
                  ["group", "outcome"])
HANDLE_SECONDS = Histogram("forgeline_record_seconds", "Time from fetch to done per record.", ["group"],
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
IN_FLIGHT = Gauge("forgeline_records_in_flight", "Records being processed.", ["group"])
WAITING = Gauge("forgeline_records_waiting_on_dependency",
                "Records waiting for a dependency to come back, by consumer group and dependency.",
                ["group", "dependency"])


@dataclass(frozen=True)
class Output:
    """One event to produce to ``topic`` before the input record counts as done."""

    topic: str
    event: Event


@dataclass(frozen=True)
class Outcome:
    """What handling a record produced.

    ``on_acked`` runs after every output is acknowledged by the broker and before the offset
    may be committed: the place to record "published" facts (job status, dedup markers).
    """

    outputs: Sequence[Output] = ()
    on_acked: Callable[[], Awaitable[None]] | None = None


Handler = Callable[[ConsumerRecord], Awaitable[Outcome]]


@dataclass
class _PartitionProgress:
    """Offsets of one partition: which are in flight, and how far everything is done."""

    in_flight: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the highest offset fetched so far

    def committable(self) -> int | None:
        """The offset to commit: nothing at or after it is known done-in-order."""
        if self.in_flight:
            return min(self.in_flight)
        return self.next_offset


@dataclass(frozen=True)
class LoopSettings:
    group_id: str
    topics: Sequence[str]
    concurrency: int = 8
    commit_interval_s: float = 0.5
    max_attempts: int = 5  # for failures that are neither Permanent nor an outage (bugs)
    backoff_base_s: float = 0.2
    backoff_max_s: float = 10.0
    # While a dependency is down, retry at least this often: the stage moves again within
    # about this long of the dependency's return.
    outage_backoff_max_s: float = 2.0
    # Every slot busy this long: poll (partitions paused) so the group does not drop the member.
    full_poll_s: float = 5.0
    shutdown_timeout_s: float = 30.0


class _Outages:
    """Which dependencies records are waiting on, as readiness and a gauge.

    A dependency is not ready while at least one record is waiting on it; the record's next
    success (or a different failure) takes it off the list. ``wake`` is called when the first
    record starts waiting and when the last one stops, so the fetch loop holds or resumes at once.
    """

    def __init__(self, group: str, readiness: Readiness | None, wake: Callable[[], None]) -> None:
        self._group = group
        self._readiness = readiness
        self._wake = wake
        self._waiting: dict[str, set[object]] = {}

    @property
    def active(self) -> bool:
        return any(self._waiting.values())

    def waiting(self, who: object, dependency: str, exc: BaseException) -> None:
        self.done(who, keep=dependency)
        records = self._waiting.setdefault(dependency, set())
        if who not in records:
            records.add(who)
            WAITING.labels(self._group, dependency).set(len(records))
            if len(records) == 1:
                self._wake()  # the fetch loop holds from now on
        if self._readiness is not None:
            self._readiness.set(dependency, False, f"{type(exc).__name__} (records waiting: {len(records)})")

    def done(self, who: object, keep: str | None = None) -> None:
        for dependency, records in self._waiting.items():
            if dependency == keep or who not in records:
                continue
            records.discard(who)
            WAITING.labels(self._group, dependency).set(len(records))
            if not records:
                if self._readiness is not None:
                    self._readiness.set(dependency, True)
                log.info("%s: %s is back; records are moving again", self._group, dependency)
                self._wake()


class ConsumerLoop:
    """Runs ``handler`` over the records of ``settings.topics`` for one consumer group."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: Producer,
        handler: Handler,
        settings: LoopSettings,
        readiness: Readiness | None = None,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._handler = handler
        self._settings = settings
        self._progress: dict[TopicPartition, _PartitionProgress] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # an outage began or ended, or a slot freed while the fetch was held
        self._slot_freed = asyncio.Event()
        self._held = False
        self._group = settings.group_id
        self._backoff = Backoff(base_s=settings.backoff_base_s, max_s=settings.backoff_max_s)
        self._outage_backoff = Backoff(base_s=settings.backoff_base_s, max_s=settings.outage_backoff_max_s)
        self._outages = _Outages(self._group, readiness, self._wake.set)
        self._retry_log = RateLimitedLog(log, every_s=10.0)
        self._commit_log = RateLimitedLog(log, every_s=30.0)

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the loop to finish: no new fetches, in-flight records complete, offsets commit."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``stop()``; the consumer and producer must already be started."""
        self._consumer.subscribe(list(self._settings.topics), listener=_Rebalance(self))
        committer = asyncio.create_task(self._commit_periodically(), name=f"{self._group}-committer")
        try:
            await self._fetch_until_stopped()
        finally:
            await self._drain(self._all_tasks(), self._settings.shutdown_timeout_s)
            committer.cancel()
            await asyncio.gather(committer, return_exceptions=True)
            with contextlib.suppress(Exception):  # the next owner replays from the last commit
                await self._commit()

    async def _fetch_until_stopped(self) -> None:
        """Fetch as many records as there are free slots. When every slot is busy, wait for one to
        free up; while a dependency is down, or when the slots stay busy for ``full_poll_s``, hold:
        pause every partition and keep polling, so the group keeps this member (``max.poll.interval.ms``)
        and nothing new is started."""
        stop_waiter = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                if self._free_slots() <= 0 and not self._outages.active:
                    if await self._slot_freed_within(self._settings.full_poll_s, stop_waiter):
                        continue
                free = self._free_slots()
                self._hold(free <= 0 or self._outages.active)
                self._wake.clear()
                fetch = asyncio.create_task(self._consumer.getmany(timeout_ms=500, max_records=max(1, free)))
                waker = asyncio.create_task(self._wake.wait())
                await asyncio.wait({fetch, stop_waiter, waker}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if not fetch.done():
                    fetch.cancel()
                    await asyncio.gather(fetch, waker, return_exceptions=True)
                    continue
                for batch in fetch.result().values():
                    for record in batch:
                        self._start(record)
        finally:
            stop_waiter.cancel()

    def _free_slots(self) -> int:
        return self._settings.concurrency - len(self._all_tasks())

    async def _slot_freed_within(self, seconds: float, stop_waiter: asyncio.Task) -> bool:
        """True when a record finished (or the loop is stopping) within ``seconds``."""
        self._slot_freed.clear()
        if self._free_slots() > 0:
            return True
        freed = asyncio.create_task(self._slot_freed.wait())
        await asyncio.wait({freed, stop_waiter}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        freed.cancel()
        return self._free_slots() > 0 or self._stopping.is_set()

    def _hold(self, hold: bool) -> None:
        """Pause every assigned partition (``hold``) or resume them. Paused partitions return no
        records, but ``getmany`` keeps running, so ``max.poll.interval.ms`` never expires."""
        if hold:
            assigned = self._consumer.assignment()
            if assigned:
                self._consumer.pause(*assigned)
        elif self._held:
            self._consumer.resume(*self._consumer.paused())
        self._held = hold

    def _wake_if_held(self) -> None:
        if self._held:
            self._wake.set()

    def _all_tasks(self) -> set[asyncio.Task[None]]:
        return set().union(*self._tasks.values()) if self._tasks else set()

    # ------------------------------------------------------------------ one record

    def _start(self, record: ConsumerRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)
        progress = self._progress.setdefault(tp, _PartitionProgress())
        progress.in_flight.add(record.offset)
        progress.next_offset = max(progress.next_offset or 0, record.offset + 1)
        tries = _Tries(record)
        task = asyncio.create_task(tracing.consumed(record, self._group, self._process(tries)),
                                   name=f"{self._group}-{tp.topic}-{tp.partition}-{record.offset}")
        self._tasks.setdefault(tp, set()).add(task)
        IN_FLIGHT.labels(self._group).inc()

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.get(tp, set()).discard(done)
            IN_FLIGHT.labels(self._group).dec()
            self._outages.done(tries)
            self._slot_freed.set()
            self._wake_if_held()
            if not done.cancelled():
                # A cancelled record (revoked partition, shutdown) stays uncommitted: it is replayed.
                partition = self._progress.get(tp)
                if partition is not None:
                    partition.in_flight.discard(record.offset)

        task.add_done_callback(finished)

    async def _process(self, tries: _Tries) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        record = tries.record
        try:
            outcome = await self._until_done(tries, "handling", lambda: self._handler(record))
        except _CannotSucceed as exc:
            await self._dead_letter(record, exc.error, attempts=exc.attempts)
        else:
            await self._publish(tries, outcome)
        HANDLE_SECONDS.labels(self._group).observe(loop.time() - started)

    async def _publish(self, tries: _Tries, outcome: Outcome) -> None:
        """Produce ``outcome``'s outputs until acknowledged, then run ``on_acked`` until it succeeds.

        A failed send does not run the handler again: the same outputs are sent again. Once they
        are acknowledged, nothing dead-letters the record (its outputs are out there).
        """
        record = tries.record
        try:
            await self._until_done(tries, "publishing", lambda: self._send(outcome.outputs))
        except _CannotSucceed as exc:  # e.g. an output larger than the broker takes
            await self._dead_letter(record, exc.error, attempts=exc.attempts)
            return
        if outcome.on_acked is not None:
            try:
                await self._until_done(tries, "recording what was published", outcome.on_acked)
            except _CannotSucceed as exc:
                log.error("%s: %s[%d]@%d: outputs published, but recording it failed for good: %r", self._group,
                          record.topic, record.partition, record.offset, exc.error)
        RECORDS.labels(self._group, "ok").inc()

    async def _until_done(self, tries: _Tries, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """``await step()`` until it succeeds, as the error says (see the module's table).

        An outage or a Retryable is waited out (not ready while it is an outage); a Permanent, or
        another error ``max_attempts`` times, raises :class:`_CannotSucceed`. While stopping, a
        failure cancels the record: it stays uncommitted and is replayed.
        """
        while True:
            try:
                result = await step()
            except asyncio.CancelledError:
                raise
            except Permanent as exc:
                raise _CannotSucceed(exc, attempts=tries.failures + 1) from exc
            except Exception as exc:  # noqa: BLE001 — classified below
                if self._stopping.is_set():
                    raise asyncio.CancelledError from exc
                await self._sleep(self._after_failure(tries, what, exc))
                continue
            self._outages.done(tries)
            tries.waits = 0
            return result

    def _after_failure(self, tries: _Tries, what: str, exc: Exception) -> float:
        """Count the failure; the seconds to wait before the next try (or raise _CannotSucceed)."""
        record = tries.record
        dependency = describe_outage(exc)
        if dependency is not None or isinstance(exc, Retryable):
            tries.waits += 1
            if dependency is not None:
                self._outages.waiting(tries, dependency, exc)
            delay = self._outage_backoff.delay(tries.waits)
            self._retry_log.warning("%s: %s %s[%d]@%d waits for %s (try %d), next in %.1fs: %r", self._group, what,
                                    record.topic, record.partition, record.offset,
                                    dependency or "a retryable condition", tries.waits, delay, exc)
            return delay
        tries.failures += 1
        if tries.failures >= self._settings.max_attempts:
            raise _CannotSucceed(exc, attempts=tries.failures) from exc
        delay = self._backoff.delay(tries.failures)
        log.warning("%s: %s %s[%d]@%d failed (attempt %d/%d), retrying in %.2fs: %r", self._group, what,
                    record.topic, record.partition, record.offset, tries.failures, self._settings.max_attempts,
                    delay, exc)
        return delay

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the loop is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _send(self, outputs: Sequence[Output]) -> None:
        sends = []
        for output in outputs:
            with tracing.producing(output.topic, output.event) as traceparent:
                sends.append(await self._producer.send(
                    output.topic, value=output.event.to_json_bytes(), key=output.event.job_id.encode(),
                    headers=event_headers(output.event, traceparent),
                ))
        if sends:
            await asyncio.gather(*sends)  # every output acknowledged (acks=all) before we go on

    async def _dead_letter(self, record: ConsumerRecord, exc: BaseException, *, attempts: int = 1) -> None:
        """Send ``record`` to its dead-letter topic, retrying the send until the broker takes it."""
        reason = str(exc) or type(exc).__name__
        if attempts > 1:
            reason = f"{reason} (after {attempts} attempts)"
        log.error("%s: dead-lettering %s[%d]@%d: %s", self._group, record.topic, record.partition,
                  record.offset, reason[:500])
        dlq = record.topic if record.topic.endswith(DLQ_SUFFIX) else record.topic + DLQ_SUFFIX
        letter = DeadLetter(reason=reason, error_class=type(exc).__name__)
        tries = _Tries(record)
        while True:
            try:
                await send_to_dlq(self._producer, dlq, record, letter, group_id=self._group)
                break
            except asyncio.CancelledError:
                raise
            except Exception as send_error:  # noqa: BLE001 — never lose it: retry until the broker takes it
                if self._stopping.is_set():
                    raise asyncio.CancelledError from send_error  # uncommitted: replayed, dead-lettered again
                tries.waits += 1
                delay = self._outage_backoff.delay(tries.waits)
                self._retry_log.warning("%s: dead-letter send to %s failed (try %d), next in %.1fs: %r", self._group,
                                        dlq, tries.waits, delay, send_error)
                await self._sleep(delay)
        RECORDS.labels(self._group, "dead_lettered").inc()

    # ------------------------------------------------------------------ commits and rebalances

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._settings.commit_interval_s)
            try:
                await self._commit()
            except Exception as exc:  # noqa: BLE001 — a failed commit is retried on the next tick
                self._commit_log.warning("%s: commit failed, will retry: %r", self._group, exc)

    async def _commit(self, partitions: Sequence[TopicPartition] | None = None) -> None:
        async with self._commit_lock:
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp in partitions if partitions is not None else list(self._progress):
                progress = self._progress.get(tp)
                position = progress.committable() if progress else None
                if position is not None and self._committed.get(tp) != position:
                    offsets[tp] = OffsetAndMetadata(position, "")
            if not offsets:
                return
            await self._consumer.commit(offsets)
            self._committed.update({tp: meta.offset for tp, meta in offsets.items()})

    async def _drain(self, tasks: set[asyncio.Task[None]], timeout_s: float) -> None:
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:  # their records stay uncommitted and are replayed by the next owner
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Finish (or give up) the records of partitions leaving us, then commit what is done."""
        tasks = set().union(*(self._tasks.get(tp, set()) for tp in revoked)) if revoked else set()
        await self._drain(tasks, self._settings.shutdown_timeout_s)
        try:
            await self._commit([tp for tp in revoked if tp in self._progress])
        except Exception as exc:  # noqa: BLE001 — the new owner replays from the last commit
            log.warning("%s: commit on revoke failed: %r", self._group, exc)
        for tp in revoked:
            self._progress.pop(tp, None)
            self._tasks.pop(tp, None)
            self._committed.pop(tp, None)


@dataclass(eq=False)
class _Tries:
    """How one record's tries went so far."""

    record: ConsumerRecord
    failures: int = 0  # failures that count towards max_attempts (neither Permanent nor an outage)
    waits: int = 0  # consecutive waits on an outage or a Retryable


class _CannotSucceed(Exception):
    """A step failed for good (a Permanent, or ``max_attempts`` other failures)."""

    def __init__(self, error: BaseException, *, attempts: int) -> None:
        super().__init__(repr(error))
        self.error = error
        self.attempts = attempts


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked) -> None:
        await self._loop.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        return None
