"""Kafka clients built from settings, and how events travel as records.

A record's value is the event's JSON; its key is the job id (so every event of a job lands on
one partition, in order); its headers name the schema, the tenant and the trace, so routers
and subscribers can filter without decoding the value.

Delivery is at-least-once: producers are idempotent with ``acks=all``; consumers never
auto-commit, and services commit an offset only after the outputs it caused are acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber, ProducerFenced
from aiokafka.structs import RecordMetadata

from services.common import tracing
from services.common.contracts import SCHEMA_VERSION, Event
from services.common.settings import KafkaSettings

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"

# Header names. Kafka headers are bytes; we keep them ASCII.
H_CONTENT_TYPE = "content-type"
H_SCHEMA = "forgeline-schema"
H_SCHEMA_VERSION = "forgeline-schema-version"
H_TENANT = "forgeline-tenant"
H_TRACEPARENT = "traceparent"
# Dead-letter headers: why, and where the message came from.
H_DLQ_REASON = "forgeline-dlq-reason"
H_DLQ_ERROR_CLASS = "forgeline-dlq-error-class"
H_DLQ_TOPIC = "forgeline-dlq-original-topic"
H_DLQ_PARTITION = "forgeline-dlq-original-partition"
H_DLQ_OFFSET = "forgeline-dlq-original-offset"
H_DLQ_CONSUMER_GROUP = "forgeline-dlq-consumer-group"

#: What each header means, for the published documents (``forgeline schema``). Forgeline's consumers
#: read only the value; the headers let routers and subscribers filter without decoding it.
HEADER_MEANINGS: dict[str, str] = {
    H_CONTENT_TYPE: f"How the value is encoded: always {CONTENT_TYPE} (UTF-8).",
    H_SCHEMA: "The payload's contract model, e.g. GenerationRequested (one per topic; see the topic's schema).",
    H_SCHEMA_VERSION: "The payload's schema_version, as decimal text.",
    H_TENANT: "The tenant (game backend) the job belongs to: the payload's tenant field.",
    H_TRACEPARENT: "W3C trace context of the event: the payload's trace.traceparent; with tracing on, the same "
                   "trace with the parent-id of the span that sent the record (continue the trace from it).",
}
DLQ_HEADER_MEANINGS: dict[str, str] = {
    H_DLQ_REASON: "Why the record could not be processed, e.g. the contract error naming each bad field "
                  "(at most 4,000 characters).",
    H_DLQ_ERROR_CLASS: "The error's class name (ContractError for a value that does not match its schema).",
    H_DLQ_TOPIC: "The topic the record was read from.",
    H_DLQ_PARTITION: "Its partition there, as decimal text.",
    H_DLQ_OFFSET: "Its offset there, as decimal text.",
    H_DLQ_CONSUMER_GROUP: "The consumer group that gave up on it.",
}
DLQ_REASON_MAX = 4000

# The broker refuses larger requests than max.message.bytes; leave room for the batch framing.
_BATCH_OVERHEAD = 64 * 1024


def _connection_args(settings: KafkaSettings) -> dict[str, Any]:
    args: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "request_timeout_ms": settings.request_timeout_ms,
    }
    if settings.sasl_mechanism:
        args["sasl_mechanism"] = settings.sasl_mechanism
        args["sasl_plain_username"] = settings.sasl_username
        args["sasl_plain_password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else None
    return args


def make_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (``acks=all``)."""
    args = _connection_args(settings) | {
        "acks": "all",
        "enable_idempotence": True,
        "max_request_size": settings.max_message_bytes + _BATCH_OVERHEAD,
        "compression_type": None if settings.compression == "none" else settings.compression,
        "linger_ms": 5,
    }
    return AIOKafkaProducer(**(args | overrides))


#: How long a client's ``start()`` may take before it is given up for a new client. A healthy
#: start takes well under a second; one that began against a broker still starting up can hang for
#: good: the broker answers the first metadata request with no brokers in it, aiokafka keeps only
#: that bootstrap connection, and once it drops (the broker restarts again) the client knows no
#: node to ask and waits forever (aiokafka issue #551; the idempotent producer's ``start`` loops on
#: "node id None"). A new client bootstraps from the configured servers again.
START_TIMEOUT_S = 20.0


async def start_within(start: Awaitable[Any], what: str, timeout_s: float | None = None) -> None:
    """Await a Kafka client's ``start()``; one still not started after ``timeout_s`` (default
    :data:`START_TIMEOUT_S`) is a connection error.

    The caller closes that client and retries with a new one, as for a broker that is not there.
    """
    timeout_s = START_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        await asyncio.wait_for(start, timeout_s)
    except TimeoutError:
        raise KafkaConnectionError(f"{what} did not start within {timeout_s:.0f}s") from None


#: Errors after which aiokafka's idempotent producer is dead for good: its sender task has ended
#: and every later send fails the same way (seen after a cluster restart). Only a new producer,
#: with a new producer id, sends again.
PRODUCER_FATAL: tuple[type[BaseException], ...] = (OutOfOrderSequenceNumber, ProducerFenced)


class RenewingProducer:
    """The process's idempotent producer, replaced by a fresh one when aiokafka's turns fatal.

    Offers what Forgeline uses of ``AIOKafkaProducer`` (``start``, ``stop``, ``send``,
    ``send_and_wait``). A send whose delivery fails with one of ``PRODUCER_FATAL`` still fails
    (its caller retries: the consumer loop counts it as a Kafka outage); the next send first
    stops the dead producer and starts a new one. Records in flight on the dead one were not
    acknowledged, so their callers send them again: at-least-once holds.
    """

    def __init__(self, make: Callable[[], AIOKafkaProducer]) -> None:
        self._make = make
        self._producer = make()
        self._dead = False
        self._renewing = asyncio.Lock()
        self.renewals = 0

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, **kwargs: Any,
                   ) -> asyncio.Future[RecordMetadata]:
        if self._dead:
            await self._renew()
        future = await self._producer.send(topic, value=value, key=key, **kwargs)
        future.add_done_callback(self._watch)
        return future

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                            **kwargs: Any) -> RecordMetadata:
        return await (await self.send(topic, value=value, key=key, **kwargs))

    def _watch(self, future: asyncio.Future[RecordMetadata]) -> None:
        if not future.cancelled() and isinstance(future.exception(), PRODUCER_FATAL):
            self._dead = True

    async def _renew(self) -> None:
        async with self._renewing:
            if not self._dead:
                return  # another send renewed it meanwhile
            old, self._producer = self._producer, self._make()
            log.warning("the Kafka producer failed for good (%s); starting a new one", "fatal delivery error")
            with contextlib.suppress(Exception):
                await old.stop()
            try:
                await start_within(self._producer.start(), "the renewed producer")
            except BaseException:
                # Still dead: the next send makes another (this one's error is a Kafka outage to its caller).
                with contextlib.suppress(Exception):
                    await self._producer.stop()
                raise
            self._dead = False
            self.renewals += 1


#: What services send with: the process's renewing producer, or a bare one (tests, tools).
Producer = AIOKafkaProducer | RenewingProducer


def make_consumer(settings: KafkaSettings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer that never commits on its own: the service commits after its outputs are acked."""
    args = _connection_args(settings) | {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": settings.max_message_bytes + _BATCH_OVERHEAD,
        "fetch_max_bytes": 4 * (settings.max_message_bytes + _BATCH_OVERHEAD),
    }
    return AIOKafkaConsumer(*topics, **(args | overrides))


def make_admin(settings: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**_connection_args(settings))


def event_headers(event: Event, traceparent: str | None = None) -> list[tuple[str, bytes]]:
    """``traceparent``: the producer span's (:func:`services.common.tracing.producing`); None: the event's."""
    return [
        (H_CONTENT_TYPE, CONTENT_TYPE.encode()),
        (H_SCHEMA, type(event).__name__.encode()),
        (H_SCHEMA_VERSION, str(SCHEMA_VERSION).encode()),
        (H_TENANT, event.tenant.encode()),
        (H_TRACEPARENT, (traceparent or event.trace.traceparent).encode()),
    ]


async def send_event(producer: AIOKafkaProducer, topic: str, event: Event) -> RecordMetadata:
    """Produce ``event`` keyed by its job id and wait until the broker has acknowledged it.

    Used where a job starts (ingest, clients): with tracing on, the event's body takes the producer
    span's context too, so every later event of the job, derived from it, is in the same trace.
    """
    with tracing.producing(topic, event) as traceparent:
        event = tracing.stamped(event, traceparent)
        return await producer.send_and_wait(
            topic, value=event.to_json_bytes(), key=event.job_id.encode(), headers=event_headers(event)
        )


def headers_of(record: ConsumerRecord) -> dict[str, str]:
    """A record's headers as text (the last value wins for a repeated name)."""
    return {name: value.decode("utf-8", "replace") for name, value in (record.headers or ())}


@dataclass(frozen=True)
class DeadLetter:
    """Why a record could not be processed."""

    reason: str
    error_class: str


async def send_to_dlq(
    producer: AIOKafkaProducer, dlq_topic: str, record: ConsumerRecord, letter: DeadLetter, *, group_id: str
) -> RecordMetadata:
    """Copy ``record`` as it was to ``dlq_topic``, with headers saying why and where it came from.

    The original key, value and headers are kept byte for byte so the message can be replayed.
    """
    extra: Mapping[str, str] = {
        H_DLQ_REASON: letter.reason[:DLQ_REASON_MAX],
        H_DLQ_ERROR_CLASS: letter.error_class,
        H_DLQ_TOPIC: record.topic,
        H_DLQ_PARTITION: str(record.partition),
        H_DLQ_OFFSET: str(record.offset),
        H_DLQ_CONSUMER_GROUP: group_id,
    }
    headers = list(record.headers or ()) + [(name, value.encode()) for name, value in extra.items()]
    return await producer.send_and_wait(dlq_topic, value=record.value, key=record.key, headers=headers)
