"""Everything the ingest handlers talk to, built once per process and passed in (never module globals)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from services.common.breaker import RedisCircuitBreaker
from services.common.cache import CacheScope
from services.common.contracts import Path
from services.common.kafka import Producer
from services.common.ports import (
    BlobStore,
    Breaker,
    BudgetLedger,
    JobStore,
    KeyPool,
    ResultCache,
    RouteStats,
    TerminalGuard,
)
from services.common.queue_position import RedisQueueBook
from services.common.ratelimit import RateLimiter
from services.common.redis import KeySpace
from services.common.settings import Connections
from services.common.tenants import TenantStore
from services.common.topics import GroupIds, Topics
from services.ingest.settings import IngestSettings
from services.providers.catalog import ProvidersFile
from services.providers.keys_admin import key_pools


@dataclass(frozen=True)
class ProviderHandle:
    """One provider of the providers file, as ``/v1/status`` reads it: its breaker and key pool (read only)."""

    name: str
    type: str
    paths: tuple[Path, ...]
    breaker: Breaker
    keys: KeyPool | None  # None: the provider has no keys (procedural, gradio) or none are set here


def provider_handles(catalog: ProvidersFile | None, redis: Redis, keys: KeySpace,
                     environ: Mapping[str, str]) -> tuple[ProviderHandle, ...]:
    """Every provider named in ``catalog`` once (a provider on both paths lists both), in the file's order.

    The pools come from ``keys_admin.key_pools`` (the ``forgeline keys`` commands' view), so both show the
    same keys: those named by each entry's ``keys_env`` in ``environ`` and its ``keys_file``.
    """
    if catalog is None:
        return ()
    pools = key_pools(catalog, redis, keys, environ)
    paths: dict[str, list[Path]] = {}
    types: dict[str, str] = {}
    for path in ("primary", "fallback"):
        for entry in catalog.path(path):
            types.setdefault(entry.name, entry.type)
            if path not in paths.setdefault(entry.name, []):
                paths[entry.name].append(path)
    return tuple(
        ProviderHandle(name=name, type=types[name], paths=tuple(paths[name]),
                       breaker=RedisCircuitBreaker(redis, keys, name), keys=pools.get(name))
        for name in paths
    )


@dataclass(frozen=True)
class IngestDeps:
    """The ingest API's clients. Built by ``services.ingest.app.build_deps``."""

    settings: IngestSettings
    connections: Connections
    topics: Topics
    groups: GroupIds
    keys: KeySpace
    producer: Producer
    admin: AIOKafkaAdminClient
    offsets: AIOKafkaConsumer  # no group, no subscription: only reads log offsets for /v1/status
    redis: Redis
    jobs: JobStore
    cache: ResultCache
    budget: BudgetLedger  # read only: the paid path's monthly ledger the routers and generators share
    routes: RouteStats  # read only: the routers' route split
    providers: tuple[ProviderHandle, ...] = ()  # empty without a providers file
    blobs: BlobStore | None = None  # where uploaded input images go (claim check); None: data: URLs stay inline
    tenants: TenantStore | None = None  # None: no keys in Redis and no limits (tests of other parts)
    limiter: RateLimiter | None = None
    guard: TerminalGuard | None = None  # for cancellations: a cancelled job's one terminal event
    cache_scope: CacheScope = CacheScope()  # whose results answer a request: its tenant's unless shared
    queue: RedisQueueBook | None = None  # queue positions of routed jobs; None: not shown

    @property
    def auth_enabled(self) -> bool:
        return bool(self.settings.api_keys) or self.settings.tenant_keys
