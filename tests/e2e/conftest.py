"""The whole pipeline as real processes (``forgeline run …``) on the session's Kafka, Redis and S3.

Each ``running_pipeline(...)`` gets its own topic prefix (so its own consumer groups), Redis key
prefix, state folder and ingest port: tests never see each other's jobs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.kafka import make_admin
from services.common.settings import Connections, TopicSettings
from services.common.topics import Topics, create_topics, delete_topics
from services.devstack.pipeline import SERVICE_NAMES, Pipeline
from services.devstack.process import free_ports, log_tail


@dataclass
class RunningPipeline:
    pipeline: Pipeline
    connections: Connections
    topics: Topics
    ingest_url: str

    def log(self, name: str) -> str:
        return log_tail(self.pipeline.process(name).log_path, lines=60)


def _env(infra, prefix: str, redis_prefix: str, ingest_port: int) -> dict[str, str]:
    return {
        "FORGELINE_KAFKA_BOOTSTRAP": infra.kafka.bootstrap,
        "FORGELINE_REDIS_URL": infra.redis.url.get_secret_value(),
        "FORGELINE_REDIS_KEY_PREFIX": redis_prefix,
        "FORGELINE_S3_ENDPOINT_URL": str(infra.s3.endpoint_url),
        "FORGELINE_S3_BUCKET": infra.s3.bucket,
        "FORGELINE_S3_ACCESS_KEY_ID": infra.s3.access_key_id.get_secret_value(),
        "FORGELINE_S3_SECRET_ACCESS_KEY": infra.s3.secret_access_key.get_secret_value(),
        "FORGELINE_TOPICS_PREFIX": prefix,
        "FORGELINE_TOPICS_PARTITIONS": "3",
        "FORGELINE_INGEST_HOST": "127.0.0.1",
        "FORGELINE_INGEST_PORT": str(ingest_port),
        "FORGELINE_ROUTER_DEPTH_REFRESH_S": "0.25",
    }


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def running_pipeline(infra, tmp_path: Path, request: pytest.FixtureRequest):
    """``async with running_pipeline(services=..., env=..., per_service_env=...) as p:`` — stopped on exit."""

    @asynccontextmanager
    async def start(
        services: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        per_service_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> AsyncIterator[RunningPipeline]:
        unique = uuid.uuid4().hex[:10]
        prefix, redis_prefix = f"e2e-{unique}", f"e2e:{unique}:"
        (ingest_port,) = free_ports(1)
        connections = Connections(
            kafka=infra.kafka, topics=TopicSettings(prefix=prefix, partitions=3),
            redis=infra.redis.model_copy(update={"key_prefix": redis_prefix}), s3=infra.s3)
        await _topics(connections, create_topics)
        ingest_url = f"http://127.0.0.1:{ingest_port}"
        pipeline = Pipeline(tmp_path / unique, _env(infra, prefix, redis_prefix, ingest_port) | dict(env or {}),
                            per_service_env=per_service_env, ingest_url=ingest_url)
        try:
            await asyncio.to_thread(pipeline.start, services)  # blocking: processes, readiness polling
            yield RunningPipeline(pipeline, connections, Topics(prefix), ingest_url)
        finally:
            call = getattr(request.node, "report_call", None)
            if call is None or call.failed:  # the services' own words are the quickest diagnosis
                for name in SERVICE_NAMES:
                    print(f"\n----- {name} log (last lines) -----\n{log_tail(pipeline.process(name).log_path, 40)}")
            await asyncio.to_thread(pipeline.stop)
            await _topics(connections, delete_topics)

    return start


async def _topics(connections: Connections, action) -> None:
    """Run ``create_topics`` or ``delete_topics`` for the pipeline's prefix."""
    admin = make_admin(connections.kafka)
    await admin.start()
    try:
        await action(admin, connections.topics)
    finally:
        await admin.close()
