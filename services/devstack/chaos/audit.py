"""After a chaos run: what really happened, read from the places that cannot lie about it.

- **Kafka**, read directly from the beginning of every partition: the terminal topics (one event
  per job, or a duplicate, byte for byte), ``generation.requested`` (two jobs for one client
  request is an orphan) and every ``.dlq`` topic (count and reasons).
- **ingest's HTTP API**: does ``GET /v1/generations/{id}`` say what the terminal event says?
- **the fake providers' charge logs** against the **spend journal** (the budget ledger's durable
  record of settled calls) and the paid completions: was any job paid twice?
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
from aiokafka.structs import ConsumerRecord

from services.common.budget import month_of
from services.common.kafka import H_DLQ_ERROR_CLASS, H_DLQ_REASON, make_consumer
from services.common.settings import KafkaSettings, S3Settings
from services.common.spend_journal import S3SpendJournal
from services.common.topics import Topics
from services.devstack.chaos.load import Submission, index_of

#: The fakes that bill (the primary path's Space is free).
PAID_FAKES: tuple[str, ...] = ("replicate", "siliconflow")


@dataclass
class Terminal:
    """Every terminal event one job got, in arrival order on its partition."""

    topics: list[str] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)

    @property
    def first(self) -> dict:
        return json.loads(self.values[0])

    @property
    def kind(self) -> str:
        return "completed" if self.topics[0].endswith("generation.completed") else "failed"


@dataclass
class KafkaRecord:
    """What the topics hold about the run."""

    terminal: dict[str, Terminal]  # job id → its terminal events
    requested: dict[int, set[str]]  # client request → job ids made for it
    dlq: dict[str, Counter[str]]  # dlq topic → "ErrorClass: reason" → count


async def read_topics(kafka: KafkaSettings, names: list[str], timeout_s: float = 120.0) -> dict[str, list[ConsumerRecord]]:
    """Every record of ``names`` (all partitions, from the beginning up to the end offsets as of now)."""
    consumer = make_consumer(kafka, *names, group_id=None)  # no group: every partition is assigned to us
    await consumer.start()
    try:
        async def read() -> dict[str, list[ConsumerRecord]]:
            while {tp.topic for tp in consumer.assignment()} != set(names):
                await asyncio.sleep(0.1)
            partitions = sorted(consumer.assignment())
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            found: dict[str, list[ConsumerRecord]] = defaultdict(list)
            pending = {tp for tp in partitions if ends[tp] > 0}
            while pending:
                for tp, records in (await consumer.getmany(*pending, timeout_ms=1000)).items():
                    found[tp.topic].extend(records)
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
            return found

        return await asyncio.wait_for(read(), timeout_s)
    finally:
        await consumer.stop()


async def kafka_record(kafka: KafkaSettings, topics: Topics) -> KafkaRecord:
    completed, failed, requested = (topics.name("generation.completed"), topics.name("generation.failed"),
                                    topics.name("generation.requested"))
    dlqs = [name for name, is_dlq in topics.all_names() if is_dlq]
    records = await read_topics(kafka, [completed, failed, requested, *dlqs])
    terminal: dict[str, Terminal] = defaultdict(Terminal)
    for topic in (completed, failed):
        for record in records.get(topic, ()):
            job = terminal[record.key.decode()]
            job.topics.append(topic)
            job.values.append(record.value)
    made: dict[int, set[str]] = defaultdict(set)
    for record in records.get(requested, ()):
        request = json.loads(record.value)
        index = (request.get("metadata") or {}).get("chaos_request")
        if index is not None:
            made[int(index)].add(request["job_id"])
    dead: dict[str, Counter[str]] = {}
    for topic in dlqs:
        if records.get(topic):
            dead[topic] = Counter(_dlq_reason(record) for record in records[topic])
    return KafkaRecord(dict(terminal), dict(made), dead)


def _dlq_reason(record: ConsumerRecord) -> str:
    headers = {key: value.decode(errors="replace") for key, value in record.headers or ()}
    return f"{headers.get(H_DLQ_ERROR_CLASS, '?')}: {headers.get(H_DLQ_REASON, '?')[:100]}"


async def http_disagreements(url: str, terminal: dict[str, Terminal], jobs: list[str]) -> tuple[list[dict], Counter]:
    """Jobs whose ``GET /v1/generations/{id}`` differs from their first terminal event; statuses of the rest.

    Returns the disagreements (job, what HTTP said, what Kafka said) and a count of HTTP statuses of
    the ``jobs`` that have no terminal event (where a lost job is stuck).
    """
    gate = asyncio.Semaphore(16)
    disagreements: list[dict] = []
    stuck: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:

        async def check(job: str) -> None:
            async with gate:
                try:
                    response = await http.get(f"/v1/generations/{job}")
                    seen = response.json() if response.status_code == 200 else {"status": f"HTTP {response.status_code}"}
                except httpx.HTTPError as exc:
                    seen = {"status": type(exc).__name__}
            if job not in terminal:
                stuck[seen.get("status", "?")] += 1
                return
            event = terminal[job]
            wanted = {"status": event.kind, "url": event.first.get("url")}
            got = {"status": seen.get("status"), "url": seen.get("url") if event.kind == "completed" else None}
            if got != wanted:
                disagreements.append({"job_id": job, "http": got, "kafka": wanted})

        await asyncio.gather(*(check(job) for job in jobs))
    return disagreements, stuck


async def charges(fake_urls: dict[str, str], run_id: str) -> dict[int, list[str]]:
    """Client request → the paid fakes that delivered an image for it, one entry per charge."""
    found: dict[int, list[str]] = defaultdict(list)
    async with httpx.AsyncClient(timeout=30.0) as http:
        for fake in PAID_FAKES:
            response = await http.get(f"{fake_urls[fake]}/_fake/charges")
            response.raise_for_status()
            for charge in response.json():
                if (index := index_of(run_id, charge["prompt"])) is not None:
                    found[index].append(fake)
    return dict(found)


async def settled_calls(s3: S3Settings, journal_prefix: str) -> Counter[str]:
    """Job id → paid calls the budget ledger settled for it, from the spend journal (this month)."""
    journal = S3SpendJournal(s3, prefix=journal_prefix)
    entries = await journal.month(month_of(datetime.now(UTC)))
    return Counter(entry.call.split(":", 1)[0] for entry in entries if entry.state == "settled")


@dataclass
class Paid:
    """Spend as three witnesses tell it; they agree when no job is paid twice."""

    charged: int  # images the paid fakes delivered for this run
    settled: int  # calls the ledger settled for this run's jobs
    paid_completions: int  # completed events made by a paid provider
    jobs_paid_twice: list[int]  # client requests charged two or more times
    charged_not_settled: int  # charges beyond the ledger's settled calls, summed per request
    settled_not_charged: int


def paid(charged: dict[int, list[str]], settled: Counter[str], record: KafkaRecord) -> Paid:
    by_request: Counter[int] = Counter()
    job_request = {job: index for index, jobs in record.requested.items() for job in jobs}
    for job, count in settled.items():
        if job in job_request:
            by_request[job_request[job]] += count
    completions = sum(1 for t in record.terminal.values() for topic, value in zip(t.topics, t.values, strict=True)
                      if topic.endswith("completed") and _paid_provider(json.loads(value)))
    requests = set(charged) | set(by_request)
    return Paid(
        charged=sum(len(c) for c in charged.values()),
        settled=sum(by_request.values()),
        paid_completions=completions,
        jobs_paid_twice=sorted(i for i, c in charged.items() if len(c) > 1),
        charged_not_settled=sum(max(0, len(charged.get(i, ())) - by_request[i]) for i in requests),
        settled_not_charged=sum(max(0, by_request[i] - len(charged.get(i, ()))) for i in requests),
    )


def _paid_provider(event: dict) -> bool:
    return not event.get("cached") and any(str(event.get("provider", "")).startswith(f) for f in PAID_FAKES)


def orphans(record: KafkaRecord, submissions: list[Submission]) -> list[int]:
    """Client requests that made two or more jobs (on Kafka, or in the answers the client got)."""
    made = {s.index: set(s.job_ids) for s in submissions}
    for index, jobs in record.requested.items():
        made.setdefault(index, set()).update(jobs)
    return sorted(index for index, jobs in made.items() if len(jobs) > 1)


def dlq_total(record: KafkaRecord) -> int:
    return sum(sum(reasons.values()) for reasons in record.dlq.values())
