"""Real Kafka, Redis and S3 for the integration and e2e tests.

Each service is resolved once per session, in this order:

1. an environment variable naming a running service (``FORGELINE_KAFKA_BOOTSTRAP``,
   ``FORGELINE_REDIS_URL``, ``FORGELINE_S3_ENDPOINT_URL``);
2. testcontainers, when a Docker engine answers;
3. the project's own local launchers (``forgeline dev up``): a Kafka broker from Maven
   Central jars, Debian's redis-server, and S3Proxy (``FORGELINE_DEV_S3_SERVER=moto``: moto).

A service that cannot be had is a test failure with the reason, never a skip. What the
session started, it stops at the end; a stack that was already running is left running.

Tests get unique names: a topic prefix, a Redis key prefix and an S3 key prefix of their own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest

from services.common.kafka import make_admin, make_producer
from services.common.redis import make_redis
from services.common.settings import (
    Connections,
    KafkaSettings,
    RedisSettings,
    S3Settings,
    TopicSettings,
)
from services.common.topics import create_topics, delete_topics

CONNECT_TIMEOUT_S = 20


@dataclass
class Infra:
    """Where the session's services are, and how each was obtained."""

    kafka: KafkaSettings
    redis: RedisSettings
    s3: S3Settings
    origin: dict[str, str] = field(default_factory=dict)


def _docker_answers() -> bool:
    """True when a Docker engine answers a ping (the client alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 — any failure means "no engine here"
        return False


# --------------------------------------------------------------------------------- containers


def _kafka_container(stack: ExitStack) -> KafkaSettings:
    from testcontainers.kafka import KafkaContainer

    container = (
        KafkaContainer("confluentinc/cp-kafka:7.9.0")
        .with_kraft()
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env("KAFKA_MESSAGE_MAX_BYTES", "10485760")
        .with_env("KAFKA_REPLICA_FETCH_MAX_BYTES", "10485760")
    )
    stack.enter_context(container)
    return KafkaSettings(bootstrap=container.get_bootstrap_server())


def _redis_container(stack: ExitStack) -> RedisSettings:
    from testcontainers.redis import RedisContainer

    container = stack.enter_context(RedisContainer("redis:7.4-alpine"))
    host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
    return RedisSettings(url=f"redis://{host}:{port}/0")


def _s3_container(stack: ExitStack) -> S3Settings:
    from testcontainers.minio import MinioContainer

    container = stack.enter_context(
        MinioContainer(access_key="forgeline", secret_key="forgeline-secret")  # noqa: S106 — local test container
    )
    config = container.get_config()
    return S3Settings(endpoint_url=f"http://{config['endpoint']}", access_key_id="forgeline",
                      secret_access_key="forgeline-secret", bucket="forgeline-test")


# --------------------------------------------------------------------------------- resolution


def _from_env() -> dict[str, object]:
    found: dict[str, object] = {}
    if os.environ.get("FORGELINE_KAFKA_BOOTSTRAP"):
        found["kafka"] = KafkaSettings()
    if os.environ.get("FORGELINE_REDIS_URL"):
        found["redis"] = RedisSettings()
    if os.environ.get("FORGELINE_S3_ENDPOINT_URL"):
        found["s3"] = S3Settings()
    return found


def _resolve(stack: ExitStack) -> Infra:
    resolved = _from_env()
    origin = {name: "environment" for name in resolved}
    missing = [name for name in ("kafka", "redis", "s3") if name not in resolved]

    if missing and _docker_answers():
        makers = {"kafka": _kafka_container, "redis": _redis_container, "s3": _s3_container}
        for name in missing:
            try:
                resolved[name] = makers[name](stack)
            except Exception as exc:  # noqa: BLE001
                pytest.fail(f"{name}: a Docker engine answers, but its testcontainer did not start: {exc!r}",
                            pytrace=False)
            origin[name] = "testcontainers"
        missing = []

    if missing:
        from services import devstack

        dev = devstack.DevStackSettings()
        try:
            started = devstack.up(dev, components=missing, progress=lambda m: print(f"[forgeline dev] {m}", flush=True))
        except devstack.DevStackError as exc:
            pytest.fail(f"could not start the local stack ({', '.join(missing)}): {exc}\n"
                        f"Run `forgeline dev up` to see the full error, or point the tests at running services "
                        f"with FORGELINE_KAFKA_BOOTSTRAP / FORGELINE_REDIS_URL / FORGELINE_S3_ENDPOINT_URL.",
                        pytrace=False)
        if started:
            stack.callback(devstack.down, dev, components=started, progress=lambda m: print(f"[forgeline dev] {m}"))
        local = devstack.env(dev)
        settings = {
            "kafka": lambda: KafkaSettings(bootstrap=local["FORGELINE_KAFKA_BOOTSTRAP"]),
            "redis": lambda: RedisSettings(url=local["FORGELINE_REDIS_URL"]),
            "s3": lambda: S3Settings(
                endpoint_url=local["FORGELINE_S3_ENDPOINT_URL"], bucket=local["FORGELINE_S3_BUCKET"],
                access_key_id=local["FORGELINE_S3_ACCESS_KEY_ID"],
                secret_access_key=local["FORGELINE_S3_SECRET_ACCESS_KEY"]),
        }
        for name in missing:
            resolved[name] = settings[name]()
            origin[name] = "local launcher" + (" (started)" if name in started else " (already running)")

    return Infra(kafka=resolved["kafka"], redis=resolved["redis"], s3=resolved["s3"], origin=origin)


async def _check_answers(infra: Infra) -> None:
    """Fail fast, with the address, when a resolved service does not answer."""
    admin = make_admin(infra.kafka)
    try:
        await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_S)
        await admin.close()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Kafka at {infra.kafka.bootstrap} ({infra.origin['kafka']}) does not answer: {exc!r}",
                    pytrace=False)
    redis = make_redis(infra.redis)
    try:
        await asyncio.wait_for(redis.ping(), CONNECT_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis ({infra.origin['redis']}) does not answer PING: {exc!r}", pytrace=False)
    finally:
        await redis.aclose()
    from services.common.blobstore import S3BlobStore

    try:
        await S3BlobStore(infra.s3).ensure_bucket(public_read=True)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"S3 at {infra.s3.endpoint_url} ({infra.origin['s3']}) cannot make bucket "
                    f"{infra.s3.bucket!r}: {exc!r}", pytrace=False)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with ExitStack() as stack:
        resolved = _resolve(stack)
        asyncio.run(_check_answers(resolved))
        print("\n[forgeline tests] services: " + ", ".join(f"{k} from {v}" for k, v in resolved.origin.items()))
        yield resolved


# --------------------------------------------------------------------------------- per test


@pytest.fixture
def unique() -> str:
    """A short id no other test shares."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def topic_settings(unique: str) -> TopicSettings:
    """Topic names of this test only (prefix ``t-<id>``), small partition counts for speed."""
    return TopicSettings(prefix=f"t-{unique}", partitions=3)


@pytest.fixture
async def connections(infra: Infra, topic_settings: TopicSettings, unique: str) -> AsyncIterator[Connections]:
    """Connections for this test: its own topic prefix and Redis key prefix.

    Whatever topics the test made under its prefix are deleted when it ends: a long-lived dev
    broker would otherwise collect thousands of partitions and slow down every later start.
    """
    yield Connections(
        kafka=infra.kafka,
        topics=topic_settings,
        redis=infra.redis.model_copy(update={"key_prefix": f"test:{unique}:"}),
        s3=infra.s3,
    )
    admin = make_admin(infra.kafka)
    await admin.start()
    try:
        await delete_topics(admin, topic_settings)
    finally:
        await admin.close()


@pytest.fixture
async def topics(connections: Connections):
    """Create this test's topics (and their .dlq twins) on the real broker."""
    admin = make_admin(connections.kafka)
    await admin.start()
    try:
        yield await create_topics(admin, connections.topics)
    finally:
        await admin.close()


@pytest.fixture
async def producer(connections: Connections) -> AsyncIterator:
    producer = make_producer(connections.kafka)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.fixture
async def redis(connections: Connections):
    client = make_redis(connections.redis)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def s3_key(unique: str) -> Callable[[str], str]:
    """Object keys under a prefix of this test's own."""
    return lambda name: f"tests/{unique}/{name}"
