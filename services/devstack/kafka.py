"""The dev stack's Kafka: KRaft nodes (broker and controller in one JVM each) from Maven Central jars.

One node by default; ``forgeline dev up --brokers 3`` runs three, a quorum of three controllers
(see ``services/devstack/cluster.py``). The jars are resolved once by Maven (``infra/local/pom.xml``
pins the version) into ``<cache_dir>/kafka-<version>/libs``; later starts reuse them without
running Maven. An extracted Kafka distribution in ``KAFKA_HOME`` replaces the download.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from services.common.settings import MAX_MESSAGE_BYTES
from services.devstack.component import Answer, Component
from services.devstack.errors import DevStackError, Progress
from services.devstack.host import ensure_command, run_streaming
from services.devstack.maven import JAVA_PACKAGE, infra_dir, maven_libs, pom_property
from services.devstack.settings import DevStackSettings

T = TypeVar("T")

#: Broker n listens on kafka_port + PORT_STRIDE·(n−1) and kafka_controller_port + PORT_STRIDE·(n−1).
PORT_STRIDE = 2


def kafka_version(pom: Path | None = None) -> str:
    """The Kafka version pinned in ``infra/local/pom.xml`` (its ``kafka.version`` property)."""
    return pom_property(pom or infra_dir() / "pom.xml", "kafka.version")


def broker_name(node_id: int) -> str:
    """Broker 1 is ``kafka`` (the folder a one-node stack always had); the others ``kafka-<n>``."""
    return "kafka" if node_id == 1 else f"kafka-{node_id}"


def broker_ports(settings: DevStackSettings, node_id: int) -> tuple[int, int]:
    """The client and controller ports of broker ``node_id``."""
    offset = PORT_STRIDE * (node_id - 1)
    return settings.kafka_port + offset, settings.kafka_controller_port + offset


def replication(brokers: int) -> tuple[int, int]:
    """Replication factor and min.insync.replicas for a cluster of ``brokers``: (1, 1) alone, (3, 2) from three.

    Two in sync of three replicas is what production runs: one broker may die (a leader election)
    while every acks=all write still lands on two.
    """
    factor = min(brokers, 3)
    return factor, max(1, factor - 1)


def render_server_properties(settings: DevStackSettings, node_id: int = 1, brokers: int = 1) -> str:
    """server.properties of node ``node_id`` of a KRaft cluster of ``brokers`` combined broker+controller nodes."""
    host = settings.host
    port, controller_port = broker_ports(settings, node_id)
    voters = ",".join(f"{n}@{host}:{broker_ports(settings, n)[1]}" for n in range(1, brokers + 1))
    factor, min_isr = replication(brokers)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(settings.state_dir / broker_name(node_id) / "data"),
        # Internal topics replicate as far as the cluster allows (one broker: a single replica).
        "offsets.topic.replication.factor": str(factor),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": str(factor),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(factor),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "default.replication.factor": str(factor),
        "min.insync.replicas": str(min_isr),
        # Tests start consumers and expect them to join at once.
        "group.initial.rebalance.delay.ms": "0",
        "num.partitions": "1",
        # Topics are created by `forgeline topics` with their real settings, never by accident.
        "auto.create.topics.enable": "false",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),  # the 128 MiB default is a waste here
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
    }
    header = "# Written by `forgeline dev up` from DevStackSettings; edits are overwritten.\n"
    return header + "".join(f"{key}={value}\n" for key, value in props.items())


def new_cluster_id() -> str:
    """A cluster id as ``kafka-storage.sh random-uuid`` makes it, without starting a JVM for it.

    Kafka ids are a random UUID in unpadded URL-safe base64; Kafka rejects ids that start with
    "-" (they read as command-line options), so those are drawn again.
    """
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def cached_libs_dir(settings: DevStackSettings, version: str) -> Path:
    return settings.cache_dir / f"kafka-{version}" / "libs"


def kafka_libs(settings: DevStackSettings, progress: Progress) -> Path:
    """The folder of Kafka jars: ``$KAFKA_HOME/libs``, the cache, or a fresh Maven download."""
    if settings.kafka_home is not None:
        libs = settings.kafka_home / "libs"
        if not libs.is_dir():
            raise DevStackError(
                f"KAFKA_HOME={settings.kafka_home} has no libs/ folder. Point it at an extracted Kafka "
                "distribution, or unset KAFKA_HOME to use the jars from Maven Central."
            )
        return libs
    version = kafka_version()
    return maven_libs(cached_libs_dir(settings, version), pom=infra_dir() / "pom.xml", what=f"Kafka {version}",
                      size="~43 MB", expect="kafka_2.13-", progress=progress)


def _run_coroutine(coroutine_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async check to completion from sync code, even when called inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine_factory())
    # A running loop (e.g. an async test fixture) cannot be re-entered: use a private one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-check") as pool:
        return pool.submit(lambda: asyncio.run(coroutine_factory())).result()


async def describe_cluster(bootstrap: str, timeout_s: float = 5.0, node_id: int | None = None) -> Answer:
    """Ask the broker for cluster metadata (a real Kafka request, not just a TCP connect).

    With ``node_id``, that broker must be among the registered ones (in a cluster, a broker
    answers before the controllers have let it in).
    """
    from aiokafka.admin import (
        AIOKafkaAdminClient,  # heavy; only needed when a broker is checked
    )

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="forgeline-devstack",
        request_timeout_ms=int(timeout_s * 1000),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    except Exception as exc:  # any failure means "does not answer yet"; the detail says why
        return Answer(False, f"metadata request failed: {type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    brokers = cluster.get("brokers") or []
    if not brokers:
        return Answer(False, "metadata response lists no brokers yet")
    if node_id is not None and node_id not in {broker.get("node_id") for broker in brokers}:
        return Answer(False, f"broker {node_id} is not registered yet ({len(brokers)} broker(s) are)")
    return Answer(True, f"cluster {cluster.get('cluster_id')}, {len(brokers)} broker(s)")


class KafkaComponent(Component):
    """One KRaft node of the dev stack's cluster (broker and controller in one JVM)."""

    marker = "kafka.Kafka"
    start_timeout = 90.0  # ~4 s normally; a cold JVM on a busy CI box is much slower
    stop_timeout = 30.0  # controlled shutdown takes a few seconds; SIGKILL only if it hangs

    def __init__(self, settings: DevStackSettings, node_id: int = 1, *, brokers: int = 1,
                 cluster_id: Callable[[], str] = new_cluster_id) -> None:
        port, self.controller_port = broker_ports(settings, node_id)
        self.name = broker_name(node_id)
        super().__init__(state_dir=settings.state_dir, host=settings.host, port=port)
        self.settings = settings
        self.node_id = node_id
        self.brokers = brokers
        self._cluster_id = cluster_id  # called only when this node's storage is formatted

    @property
    def data_dir(self) -> Path:
        return self.process.dir / "data"

    def data_paths(self) -> list[Path]:
        return [self.data_dir]

    @property
    def properties_path(self) -> Path:
        return self.process.dir / "server.properties"

    def ports(self) -> dict[int, str]:
        nth = "" if self.node_id == 1 else f" (+{PORT_STRIDE * (self.node_id - 1)} for broker {self.node_id})"
        return {
            self.port: self.settings.env_name("kafka_port") + nth,
            self.controller_port: self.settings.env_name("kafka_controller_port") + nth,
        }

    def prepare(self, progress: Progress) -> list[str]:
        java = ensure_command("java", JAVA_PACKAGE, progress)
        classpath = f"{kafka_libs(self.settings, progress)}/*"
        log4j = infra_dir() / "log4j2.properties"
        if not log4j.is_file():
            raise DevStackError(f"{log4j} is missing; restore it from git")
        self.process.dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(render_server_properties(self.settings, self.node_id, self.brokers))
        jvm = [java, f"-Dlog4j2.configurationFile={log4j}", "-Djava.awt.headless=true", "-cp", classpath]
        if not (self.data_dir / "meta.properties").is_file():
            progress(f"formatting storage in {self.data_dir}…")
            run_streaming(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", self._cluster_id(), "-c", str(self.properties_path)],
                progress=progress,
                show=lambda line: None,
                log_path=self.process.dir / "format.log",
                heartbeat="still formatting",
            )
        # No -Xms: the JVM starts small and grows to -Xmx only if the broker needs it.
        return [*jvm[:1], f"-Xmx{self.settings.kafka_heap}", *jvm[1:], "kafka.Kafka", str(self.properties_path)]

    def check(self) -> Answer:
        node = self.node_id if self.brokers > 1 else None
        return _run_coroutine(lambda: describe_cluster(self.address, node_id=node))
