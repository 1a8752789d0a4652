"""The dev stack's Kafka: one KRaft broker+controller JVM built from Maven Central jars.

The jars are resolved once by Maven (``infra/local/pom.xml`` pins the version) into
``<cache_dir>/kafka-<version>/libs``; later starts reuse them without running Maven. An
extracted Kafka distribution in ``KAFKA_HOME`` replaces the download.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import re
import shutil
import tempfile
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from services.common.settings import MAX_MESSAGE_BYTES
from services.devstack.component import Answer, Component
from services.devstack.errors import DevStackError, Progress
from services.devstack.host import (
    ensure_command,
    ensure_commands,
    exclusive_lock,
    run_streaming,
)
from services.devstack.settings import DevStackSettings

T = TypeVar("T")

POM_NAMESPACE = "http://maven.apache.org/POM/4.0.0"
#: Written last into a finished download; a libs folder without it is never used.
LIBS_COMPLETE_MARKER = ".forgeline-complete"
JAVA_PACKAGE = "default-jre-headless"
MAVEN_PACKAGE = "maven"


def infra_dir() -> Path:
    """``infra/local/`` of this checkout (pom.xml and log4j2.properties)."""
    path = Path(__file__).resolve().parents[2] / "infra" / "local"
    if not (path / "pom.xml").is_file():
        raise DevStackError(
            f"{path / 'pom.xml'} is missing; the dev stack runs from a Forgeline source checkout "
            "(git clone, then `pip install -e '.[dev]'`)."
        )
    return path


def kafka_version(pom: Path | None = None) -> str:
    """The Kafka version pinned in ``infra/local/pom.xml`` (its ``kafka.version`` property)."""
    pom = pom or infra_dir() / "pom.xml"
    element = ET.parse(pom).getroot().find(f"{{{POM_NAMESPACE}}}properties/{{{POM_NAMESPACE}}}kafka.version")
    version = (element.text or "").strip() if element is not None else ""
    if not version:
        raise DevStackError(f"{pom} has no <properties><kafka.version>; put the Kafka version there")
    return version


def render_server_properties(settings: DevStackSettings) -> str:
    """server.properties of a single-node KRaft cluster (broker and controller in one JVM)."""
    host = settings.host
    data_dir = settings.state_dir / "kafka" / "data"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{settings.kafka_controller_port}",
        "listeners": f"PLAINTEXT://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.kafka_controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        # One broker: every internal topic must make do with a single replica.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
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


_DOWNLOADED = re.compile(r"Downloaded from \S+: (?P<url>\S+) \((?P<size>[^)]*)\)")


def _maven_line(line: str) -> str | None:
    """Which Maven output lines the user sees: finished jar downloads and errors."""
    match = _DOWNLOADED.search(line)
    if match and match["url"].endswith(".jar"):
        size = match["size"].split(" at ")[0]
        return f"downloaded {match['url'].rsplit('/', 1)[-1]} ({size})"
    if line.startswith("[ERROR]"):
        return line
    return None


def run_maven(mvn: str, pom: Path, output_dir: Path, *, log_path: Path, progress: Progress) -> None:
    """Copy the runtime dependencies of ``pom`` (downloading them as needed) into ``output_dir``."""
    run_streaming(
        [
            mvn,
            "-B",
            "-Dstyle.color=never",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={output_dir}",
            "-DincludeScope=runtime",
            "-f",
            str(pom),
        ],
        progress=progress,
        show=_maven_line,
        log_path=log_path,
        heartbeat="still downloading Kafka jars",
    )


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
    pom = infra_dir() / "pom.xml"
    version = kafka_version(pom)
    libs = cached_libs_dir(settings, version)
    if (libs / LIBS_COMPLETE_MARKER).is_file():
        return libs
    mvn = ensure_commands({"java": JAVA_PACKAGE, "mvn": MAVEN_PACKAGE}, progress)["mvn"]
    home = libs.parent
    home.mkdir(parents=True, exist_ok=True)
    # Two `up`s on a cold machine (e.g. a test run and a shell) must not both download.
    waiting = "another process is downloading the Kafka jars; waiting for it…"
    with exclusive_lock(home / ".download.lock", progress=progress, waiting=waiting):
        if (libs / LIBS_COMPLETE_MARKER).is_file():  # the other process finished it
            return libs
        progress(f"first start: downloading Kafka {version} jars with Maven (~43 MB) into {home}…")
        # Download beside the target and rename when complete: an interrupted download is
        # never mistaken for a whole one.
        partial = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=home))
        try:
            run_maven(mvn, pom, partial, log_path=home / "maven.log", progress=progress)
            jars = sorted(p.name for p in partial.glob("*.jar"))
            if not any(name.startswith("kafka_2.13-") for name in jars):
                raise DevStackError(f"Maven finished but copied no kafka_2.13 jar; see {home / 'maven.log'}")
            partial.chmod(0o755)  # mkdtemp makes it private; the jars are not secret
            (partial / LIBS_COMPLETE_MARKER).write_text(json.dumps({"kafka_version": version, "jars": jars}) + "\n")
            if libs.exists():  # an incomplete folder without the marker, e.g. made by hand
                shutil.rmtree(libs)
            partial.rename(libs)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        progress(f"Kafka {version}: {len(jars)} jars ready in {libs}")
    return libs


def _run_coroutine(coroutine_factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an async check to completion from sync code, even when called inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine_factory())
    # A running loop (e.g. an async test fixture) cannot be re-entered: use a private one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-check") as pool:
        return pool.submit(lambda: asyncio.run(coroutine_factory())).result()


async def describe_cluster(bootstrap: str, timeout_s: float = 5.0) -> Answer:
    """Ask the broker for cluster metadata (a real Kafka request, not just a TCP connect)."""
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
    return Answer(True, f"cluster {cluster.get('cluster_id')}, {len(brokers)} broker(s)")


class KafkaComponent(Component):
    name = "kafka"
    marker = "kafka.Kafka"
    start_timeout = 90.0  # ~4 s normally; a cold JVM on a busy CI box is much slower
    stop_timeout = 30.0  # controlled shutdown takes a few seconds; SIGKILL only if it hangs

    def __init__(self, settings: DevStackSettings) -> None:
        super().__init__(state_dir=settings.state_dir, host=settings.host, port=settings.kafka_port)
        self.settings = settings

    @property
    def data_dir(self) -> Path:
        return self.process.dir / "data"

    @property
    def properties_path(self) -> Path:
        return self.process.dir / "server.properties"

    def ports(self) -> dict[int, str]:
        return {
            self.settings.kafka_port: self.settings.env_name("kafka_port"),
            self.settings.kafka_controller_port: self.settings.env_name("kafka_controller_port"),
        }

    def prepare(self, progress: Progress) -> list[str]:
        java = ensure_command("java", JAVA_PACKAGE, progress)
        classpath = f"{kafka_libs(self.settings, progress)}/*"
        log4j = infra_dir() / "log4j2.properties"
        if not log4j.is_file():
            raise DevStackError(f"{log4j} is missing; restore it from git")
        self.process.dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(render_server_properties(self.settings))
        jvm = [java, f"-Dlog4j2.configurationFile={log4j}", "-Djava.awt.headless=true", "-cp", classpath]
        if not (self.data_dir / "meta.properties").is_file():
            progress(f"formatting storage in {self.data_dir}…")
            run_streaming(
                [*jvm, "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(self.properties_path)],
                progress=progress,
                show=lambda line: None,
                log_path=self.process.dir / "format.log",
                heartbeat="still formatting",
            )
        # No -Xms: the JVM starts small and grows to -Xmx only if the broker needs it.
        return [*jvm[:1], f"-Xmx{self.settings.kafka_heap}", *jvm[1:], "kafka.Kafka", str(self.properties_path)]

    def check(self) -> Answer:
        return _run_coroutine(lambda: describe_cluster(self.address))
