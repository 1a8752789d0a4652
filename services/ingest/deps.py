"""Everything the ingest handlers talk to, built once per process and passed in (never module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from services.common.cache import ResultCache
from services.common.jobs import JobStore
from services.common.redis import KeySpace
from services.common.settings import Connections
from services.common.topics import GroupIds, Topics
from services.ingest.settings import IngestSettings


@dataclass(frozen=True)
class IngestDeps:
    """The ingest API's clients. Built by ``services.ingest.app.build_ingest``."""

    settings: IngestSettings
    connections: Connections
    topics: Topics
    groups: GroupIds
    keys: KeySpace
    producer: AIOKafkaProducer
    admin: AIOKafkaAdminClient
    offsets: AIOKafkaConsumer  # no group, no subscription: only reads log offsets for /v1/status
    redis: Redis
    jobs: JobStore
    cache: ResultCache

    @property
    def auth_enabled(self) -> bool:
        return bool(self.settings.api_keys)
