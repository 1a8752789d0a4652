"""The topics Forgeline owns: their names, payload models, and idempotent creation.

Every topic has a dead-letter twin (``<name>.dlq``) that receives messages a consumer could
not process, with headers saying why and where they came from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from services.common import contracts
from services.common.settings import TopicSettings

DLQ_SUFFIX = ".dlq"

# Kafka protocol error codes we treat as outcomes, not failures.
_TOPIC_ALREADY_EXISTS = 36
# UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE: a new topic that metadata has not caught up with.
_NOT_READY = {3, 5}


TopicKey = Literal[
    "generation.requested",
    "generation.cancel",
    "generation.primary",
    "generation.fallback",
    "generation.generated",
    "generation.completed",
    "generation.failed",
    "comparison.requested",
    "comparison.completed",
    "comparison.failed",
]


@dataclass(frozen=True)
class TopicSpec:
    """One logical topic: its key (the name without prefix) and the model of its messages."""

    key: TopicKey
    model: type[contracts.Event]
    description: str
    producers: tuple[str, ...]
    #: The service whose consumer group reads it (``GroupIds.of``); None: only subscribers outside Forgeline.
    consumer: str | None = None


TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec("generation.requested", contracts.GenerationRequested,
              "Image requests, from ingest or produced by game backends directly.",
              ("ingest", "game backends"), "router"),
    TopicSpec("generation.cancel", contracts.GenerationCancelRequested,
              "Cancellations of jobs, from game backends that speak Kafka; the router ends each job canceled.",
              ("game backends",), "router.cancel"),
    TopicSpec("generation.primary", contracts.GenerationRouted, "Jobs routed to the free primary path.",
              ("router",), "generator.primary"),
    TopicSpec("generation.fallback", contracts.GenerationRouted, "Jobs routed to the paid fallback path.",
              ("router",), "generator.fallback"),
    TopicSpec("generation.generated", contracts.GenerationGenerated, "Generated image bytes, on their way to storage.",
              ("generator",), "storage"),
    TopicSpec("generation.completed", contracts.GenerationCompleted,
              "Published images: subscribe here for results. The router's coalescing fan-out (consumer group "
              "<prefix>.router.coalesce) reads it too, to give jobs that waited on an identical one the same image.",
              ("storage", "router", "comparer")),
    TopicSpec("generation.failed", contracts.GenerationFailed,
              "Jobs that ended without an image. The router's coalescing fan-out (consumer group "
              "<prefix>.router.coalesce) reads it too, to end or re-route jobs that waited on the failed one.",
              ("generator", "storage", "router", "ingest")),
    TopicSpec("comparison.requested", contracts.ComparisonRequested, "Requests to score an image against a target.",
              ("ingest", "storage"), "comparer"),
    TopicSpec("comparison.completed", contracts.ComparisonCompleted, "Comparison scores.", ("comparer",)),
    TopicSpec("comparison.failed", contracts.ComparisonFailed, "Comparisons that could not be made.", ("comparer",)),
)

SPECS_BY_KEY: dict[str, TopicSpec] = {spec.key: spec for spec in TOPIC_SPECS}


@dataclass(frozen=True)
class Topics:
    """Full topic names under a prefix: ``Topics("forgeline").name("generation.requested")``."""

    prefix: str

    @classmethod
    def from_settings(cls, settings: TopicSettings) -> Topics:
        return cls(settings.prefix)

    def name(self, key: TopicKey) -> str:
        if key not in SPECS_BY_KEY:
            raise KeyError(f"no topic {key!r}; known: {', '.join(SPECS_BY_KEY)}")
        return f"{self.prefix}.{key}"

    def dlq(self, key: TopicKey) -> str:
        return self.name(key) + DLQ_SUFFIX

    def all_names(self) -> Iterator[tuple[str, bool]]:
        """Every topic name with whether it is a dead-letter topic, in declaration order."""
        for spec in TOPIC_SPECS:
            yield self.name(spec.key), False
            yield self.dlq(spec.key), True


@dataclass(frozen=True)
class GroupIds:
    """Consumer group ids, derived from the topic prefix so one prefix isolates a whole deployment.

    KEDA's Kafka scaler and the router both read the generator groups' lag by these names.
    """

    prefix: str

    @classmethod
    def from_settings(cls, settings: TopicSettings) -> GroupIds:
        return cls(settings.prefix)

    def of(self, consumer: str) -> str:
        """The group of a ``TopicSpec.consumer``: ``router``, ``generator.primary``…"""
        return f"{self.prefix}.{consumer}"

    @property
    def router(self) -> str:
        return f"{self.prefix}.router"

    def generator(self, path: str) -> str:
        return f"{self.prefix}.generator.{path}"

    @property
    def storage(self) -> str:
        return f"{self.prefix}.storage"

    @property
    def comparer(self) -> str:
        return f"{self.prefix}.comparer"

    @property
    def webhooks(self) -> str:
        return f"{self.prefix}.webhooks"


def topic_configs(settings: TopicSettings, *, dlq: bool) -> dict[str, str]:
    """Broker-side configuration of one topic."""
    return {
        "retention.ms": str(settings.dlq_retention_ms if dlq else settings.retention_ms),
        "compression.type": settings.compression,
        "max.message.bytes": str(settings.max_message_bytes),
        "min.insync.replicas": str(settings.min_insync_replicas),
        "cleanup.policy": "delete",
    }


@dataclass(frozen=True)
class TopicOutcome:
    name: str
    status: Literal["created", "exists"]
    partitions: int
    warning: str | None = None


class TopicAdminError(RuntimeError):
    """The broker refused to create or describe a topic."""


class TopicNotReady(TopicAdminError):
    """A topic is not (yet) in the broker's metadata, or has a partition without a leader."""


async def create_topics(
    admin: AIOKafkaAdminClient,
    settings: TopicSettings,
    progress: Callable[[str], None] = lambda _message: None,
) -> list[TopicOutcome]:
    """Create every topic and its ``.dlq`` twin; existing topics are left as they are.

    Safe to run any number of times. An existing topic whose partition count or message size
    differs from the settings is reported with a warning (Kafka cannot shrink partitions, and
    changing them re-keys every job, so we never do it silently).
    """
    topics = Topics.from_settings(settings)
    wanted = list(topics.all_names())
    new_topics = [
        NewTopic(name, settings.partitions, settings.replication_factor, topic_configs=topic_configs(settings, dlq=dlq))
        for name, dlq in wanted
    ]
    response = await admin.create_topics(new_topics)
    codes = {name: code for name, code, _message in response.topic_errors}
    for name, code, message in response.topic_errors:
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            raise TopicAdminError(f"cannot create topic {name!r}: Kafka error {code}: {message}")

    # A created topic is committed by the controller before every broker's metadata has it:
    # wait until all of them answer, so callers can produce to them at once.
    described = await _await_visible(admin, [name for name, _ in wanted])

    outcomes: list[TopicOutcome] = []
    for name, _dlq in wanted:
        if codes.get(name, 0) == 0:
            outcomes.append(TopicOutcome(name, "created", settings.partitions))
            progress(f"created {name} ({settings.partitions} partitions)")
        else:
            actual = described[name]
            warning = _drift(actual, settings)
            outcomes.append(TopicOutcome(name, "exists", actual.partitions, warning))
            progress(f"exists  {name} ({actual.partitions} partitions)" + (f" — {warning}" if warning else ""))
    return outcomes


async def wait_for_topics(
    admin: AIOKafkaAdminClient,
    settings: TopicSettings,
    timeout_s: float,
    progress: Callable[[str], None] = lambda _message: None,
) -> dict[str, TopicDescription]:
    """Wait until every topic and its ``.dlq`` twin exist (what a pod does before it starts)."""
    names = [name for name, _ in Topics.from_settings(settings).all_names()]
    return await _await_visible(admin, names, timeout_s, progress=progress, every_s=2.0)


async def _await_visible(
    admin: AIOKafkaAdminClient,
    names: list[str],
    timeout_s: float = 30.0,
    *,
    progress: Callable[[str], None] = lambda _message: None,
    every_s: float = 0.1,
) -> dict[str, TopicDescription]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await describe_topics(admin, names)
        except TopicNotReady as exc:
            if loop.time() > deadline:
                raise TopicAdminError(f"topics did not become available within {timeout_s:.0f} s: {exc}. "
                                      "Create them with `forgeline topics create`.") from exc
            progress(f"waiting for {exc}")
            await asyncio.sleep(every_s)


async def delete_topics(admin: AIOKafkaAdminClient, settings: TopicSettings) -> None:
    """Delete every topic under the prefix (tests and benchmarks clean up after themselves)."""
    names = [name for name, _ in Topics.from_settings(settings).all_names()]
    await admin.delete_topics(names)


@dataclass(frozen=True)
class TopicDescription:
    name: str
    partitions: int
    configs: dict[str, str]


async def describe_topics(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, TopicDescription]:
    """Partition counts and configs of existing topics."""
    metadata = await admin.describe_topics(names)
    partitions: dict[str, int] = {}
    for topic in metadata:
        if topic["error_code"] in _NOT_READY or any(p["error_code"] in _NOT_READY for p in topic["partitions"]):
            missing = topic["error_code"] == 3
            raise TopicNotReady(f"topic {topic['topic']!r} " + ("does not exist" if missing else "has no leader yet"))
        if topic["error_code"] != 0:
            raise TopicAdminError(f"cannot describe topic {topic['topic']!r}: Kafka error {topic['error_code']}")
        partitions[topic["topic"]] = len(topic["partitions"])

    responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, error_message, _type, resource_name, entries in response.resources:
            if error_code in _NOT_READY:
                # In a cluster the broker asked for configs may not have the new topic in its metadata yet.
                raise TopicNotReady(f"topic {resource_name!r} is not known to every broker yet")
            if error_code != 0:
                raise TopicAdminError(f"cannot read config of {resource_name!r}: Kafka error {error_code}"
                                      + (f": {error_message}" if error_message else ""))
            configs[resource_name] = {entry[0]: entry[1] for entry in entries}
    return {name: TopicDescription(name, partitions[name], configs.get(name, {})) for name in names}


def _drift(actual: TopicDescription, settings: TopicSettings) -> str | None:
    problems = []
    if actual.partitions != settings.partitions:
        problems.append(f"has {actual.partitions} partitions, settings ask for {settings.partitions}")
    max_bytes = actual.configs.get("max.message.bytes")
    if max_bytes is not None and int(max_bytes) < settings.max_message_bytes:
        problems.append(f"max.message.bytes is {max_bytes}, settings ask for {settings.max_message_bytes}")
    return "; ".join(problems) or None
