"""The consumer loop every Forgeline worker runs: at-least-once, concurrent, in-order commits.

How a record travels::

    fetch ──▶ handler(record) ──▶ Outcome(outputs) ──▶ produce + wait for acks ──▶ on_acked() ──▶ done
                 │ Permanent               ──▶ <topic>.dlq (reason in headers) ──▶ done
                 │ Retryable / unexpected  ──▶ retry with backoff ... then .dlq ──▶ done

- Up to ``concurrency`` records are in flight at once, across partitions.
- The offset committed for a partition is the lowest offset still in flight there (or one past
  the highest done): never past a record whose outputs are not acknowledged. A crash replays
  from there, so handlers make every effect safe to repeat.
- A bad record never blocks its partition: after its retries it goes to the dead-letter topic
  with the reason, and the loop moves on.

Errors a handler raises, and what the loop does (the classes are in :mod:`services.common.errors`;
the loop looks at the two bases only):

    Permanent           can never succeed (a ContractError, …)      → dead-letter at once
    Retryable           a dependency failed (S3, no key free, …)    → retry with backoff, then dead-letter
    any other Exception a bug, a surprise, an untranslated error    → retry with backoff, then dead-letter
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import Counter, Gauge, Histogram

from services.common.backoff import Backoff
from services.common.contracts import Event
from services.common.errors import Permanent
from services.common.kafka import DeadLetter, event_headers, send_to_dlq
from services.common.topics import DLQ_SUFFIX

log = logging.getLogger(__name__)

RECORDS = Counter("forgeline_records_total", "Records processed, by consumer group and outcome.",
                  ["group", "outcome"])
HANDLE_SECONDS = Histogram("forgeline_record_seconds", "Time from fetch to done per record.", ["group"],
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
IN_FLIGHT = Gauge("forgeline_records_in_flight", "Records being processed.", ["group"])


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
    max_attempts: int = 5
    backoff_base_s: float = 0.2
    backoff_max_s: float = 10.0
    shutdown_timeout_s: float = 30.0


class ConsumerLoop:
    """Runs ``handler`` over the records of ``settings.topics`` for one consumer group."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        handler: Handler,
        settings: LoopSettings,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._handler = handler
        self._settings = settings
        self._progress: dict[TopicPartition, _PartitionProgress] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._committed: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._group = settings.group_id
        self._backoff = Backoff(base_s=settings.backoff_base_s, max_s=settings.backoff_max_s)

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
            await self._commit()

    async def _fetch_until_stopped(self) -> None:
        stop_waiter = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                await self._slots.acquire()  # back-pressure: fetch only when a slot is free
                free = self._free_slots()
                fetch = asyncio.create_task(self._consumer.getmany(timeout_ms=500, max_records=1 + free))
                await asyncio.wait({fetch, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
                if not fetch.done():
                    fetch.cancel()
                    await asyncio.gather(fetch, return_exceptions=True)
                    self._slots.release()
                    break
                batches = fetch.result()
                records = [record for batch in batches.values() for record in batch]
                if not records:
                    self._slots.release()
                    continue
                for index, record in enumerate(records):
                    if index > 0:
                        await self._slots.acquire()
                    self._start(record)
        finally:
            stop_waiter.cancel()

    def _free_slots(self) -> int:
        """How many more records fit after the slot just taken: the size of the next fetch."""
        return max(0, self._settings.concurrency - 1 - len(self._all_tasks()))

    def _all_tasks(self) -> set[asyncio.Task[None]]:
        return set().union(*self._tasks.values()) if self._tasks else set()

    # ------------------------------------------------------------------ one record

    def _start(self, record: ConsumerRecord) -> None:
        tp = TopicPartition(record.topic, record.partition)
        progress = self._progress.setdefault(tp, _PartitionProgress())
        progress.in_flight.add(record.offset)
        progress.next_offset = max(progress.next_offset or 0, record.offset + 1)
        task = asyncio.create_task(self._process(record), name=f"{self._group}-{tp.topic}-{tp.partition}-{record.offset}")
        self._tasks.setdefault(tp, set()).add(task)
        IN_FLIGHT.labels(self._group).inc()

        def finished(done: asyncio.Task[None]) -> None:
            self._tasks.get(tp, set()).discard(done)
            self._slots.release()
            IN_FLIGHT.labels(self._group).dec()
            if not done.cancelled():
                # A cancelled record (revoked partition, shutdown) stays uncommitted: it is replayed.
                partition = self._progress.get(tp)
                if partition is not None:
                    partition.in_flight.discard(record.offset)

        task.add_done_callback(finished)

    async def _process(self, record: ConsumerRecord) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = await self._handler(record)
                await self._publish(outcome)
                RECORDS.labels(self._group, "ok").inc()
                break
            except asyncio.CancelledError:
                raise
            except Permanent as exc:
                await self._dead_letter(record, exc)
                break
            except Exception as exc:  # noqa: BLE001 — retryable or unknown: retry, then dead-letter
                if attempt >= self._settings.max_attempts or self._stopping.is_set():
                    if self._stopping.is_set():
                        raise asyncio.CancelledError from exc  # leave it uncommitted; replayed later
                    await self._dead_letter(record, exc, attempts=attempt)
                    break
                delay = self._backoff.delay(attempt)
                log.warning("%s: %s[%d]@%d failed (attempt %d/%d), retrying in %.2fs: %r", self._group,
                            record.topic, record.partition, record.offset, attempt, self._settings.max_attempts,
                            delay, exc)
                await asyncio.sleep(delay)
        HANDLE_SECONDS.labels(self._group).observe(loop.time() - started)

    async def _publish(self, outcome: Outcome) -> None:
        sends = [
            await self._producer.send(
                output.topic, value=output.event.to_json_bytes(), key=output.event.job_id.encode(),
                headers=event_headers(output.event),
            )
            for output in outcome.outputs
        ]
        if sends:
            await asyncio.gather(*sends)  # every output acknowledged (acks=all) before we go on
        if outcome.on_acked is not None:
            await outcome.on_acked()

    async def _dead_letter(self, record: ConsumerRecord, exc: Exception, *, attempts: int = 1) -> None:
        reason = str(exc) or type(exc).__name__
        if attempts > 1:
            reason = f"{reason} (after {attempts} attempts)"
        log.error("%s: dead-lettering %s[%d]@%d: %s", self._group, record.topic, record.partition,
                  record.offset, reason)
        dlq = record.topic if record.topic.endswith(DLQ_SUFFIX) else record.topic + DLQ_SUFFIX
        await send_to_dlq(self._producer, dlq, record, DeadLetter(reason=reason, error_class=type(exc).__name__),
                          group_id=self._group)
        RECORDS.labels(self._group, "dead_lettered").inc()

    # ------------------------------------------------------------------ commits and rebalances

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._settings.commit_interval_s)
            try:
                await self._commit()
            except Exception as exc:  # noqa: BLE001 — a failed commit is retried on the next tick
                log.warning("%s: commit failed, will retry: %r", self._group, exc)

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


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop

    async def on_partitions_revoked(self, revoked) -> None:
        await self._loop.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        return None
