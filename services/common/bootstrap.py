"""One bootstrap: the shared infrastructure of a process, built from settings once, closed once.

Every service is wired the same way::

    async with bootstrap(connections, budget=BudgetSettings(), environ=os.environ) as infra:
        handler = await build(settings, infra)      # the service's decisions, on the ports
        await serve(settings, infra, stop)          # build + run its loop until ``stop``

:class:`Infra` hands out the clients a service asks for — the Kafka producer, consumers, the
admin client, Redis, an HTTP pool, the blob store, the budget ledger — creating each on first
use and registering its cleanup in one ``AsyncExitStack``, so they close in reverse order
whatever happens, and a service that needs no S3 never opens it. Tests enter the same
``bootstrap`` with the test's connections; unit tests skip it and pass fakes to the handlers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from redis.asyncio import Redis

from services.common.backoff import until_ready
from services.common.blobstore import S3BlobStore
from services.common.budget import RedisBudgetLedger, usd
from services.common.cache import CacheScope
from services.common.consumer import ConsumerLoop, Handler, LoopSettings
from services.common.health import Readiness
from services.common.jobs import RedisJobStore, RedisTerminalGuard
from services.common.kafka import RenewingProducer, make_admin, make_consumer, make_producer, start_within
from services.common.outages import is_outage
from services.common.redis import KeySpace, make_redis
from services.common.settings import BudgetSettings, CacheSettings, Connections
from services.common.spend_journal import S3SpendJournal, journal_namespace
from services.common.tenants import TenantStore
from services.common.topics import GroupIds, Topics

__all__ = ["Infra", "bootstrap", "make_http_client"]

T = TypeVar("T")

log = logging.getLogger(__name__)

# "Unable to bootstrap", a coordinator still being elected, a socket refused: wait for the cluster.
_KAFKA_STARTUP_ERRORS = (KafkaError, OSError)


def make_http_client() -> httpx.AsyncClient:
    """The client provider adapters share, with no cap of its own on connections.

    httpx's default pool holds 100 connections and keeps 20 alive: call 101 waits for a free one,
    so with 2 s provider calls a generator made at most 50 calls a second whatever its
    concurrency, and reconnected most of them each time. The consumer loop's concurrency is the
    bound on calls in flight; idle connections close after 30 s.
    """
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=None,
                                                 keepalive_expiry=30.0))


@dataclass
class Infra:
    """What a service is built from. Clients are created on first use and closed by ``bootstrap``."""

    connections: Connections
    budget_settings: BudgetSettings
    environ: Mapping[str, str]  # where the providers file's ``keys_env`` variables are read
    topics: Topics
    groups: GroupIds
    keys: KeySpace
    _stack: AsyncExitStack
    readiness: Readiness = field(default_factory=Readiness)  # what /readyz reports (services.common.health)
    cache_scope: CacheScope = field(default_factory=CacheScope)  # whose results answer a request (per tenant)
    _made: dict[str, Any] = field(default_factory=dict)

    async def _once(self, name: str, make: Callable[[], Awaitable[T]]) -> T:
        if name not in self._made:
            self._made[name] = await make()
        return self._made[name]

    async def _started(self, what: str, make: Callable[[], T], start: Callable[[T], Awaitable[Any]],
                       close: Callable[[T], Awaitable[Any]]) -> T:
        """A started client from ``make()``, its cleanup registered.

        A start that fails because the brokers are not there yet (a fresh cluster, a restart) is
        retried with backoff, on a new client each time, for as long as it takes; meanwhile the
        process reports ``kafka`` not ready. A client whose start fails, or does not finish within
        :data:`~services.common.kafka.START_TIMEOUT_S`, is closed at once.
        """

        async def attempt() -> T:
            client = make()
            try:
                await start_within(start(client), what)
            except BaseException:
                await close(client)
                raise
            return client

        try:
            client = await attempt()
        except Exception as exc:  # noqa: BLE001 — only outages are waited out; the rest propagate
            if not is_outage(exc):
                raise
            self.readiness.set("kafka", False, f"{what}: {type(exc).__name__}")
            client = await until_ready(attempt, what=f"{what} (Kafka {self.connections.kafka.bootstrap})",
                                       logger=log, retry_on=_KAFKA_STARTUP_ERRORS)
        self._stack.push_async_callback(lambda: close(client))
        return client

    async def enter(self, context: AbstractAsyncContextManager[T]) -> T:
        """Enter a service's own resource (a fetcher, a server) so it closes with the rest."""
        return await self._stack.enter_async_context(context)

    # -- Kafka

    async def producer(self) -> RenewingProducer:
        """The process's one producer (idempotent, ``acks=all``; renewed when aiokafka's turns fatal)."""

        async def make() -> RenewingProducer:
            return await self._started("the producer",
                                       lambda: RenewingProducer(lambda: make_producer(self.connections.kafka)),
                                       RenewingProducer.start, RenewingProducer.stop)

        return await self._once("producer", make)

    async def consumer(self, group_id: str | None) -> AIOKafkaConsumer:
        """A new started consumer; with ``group_id=None`` it only reads offsets (no subscription, no commits)."""
        kafka = self.connections.kafka
        # Static membership (KIP-345): a restarted member with the same instance id takes its
        # partitions back at once, instead of the group waiting out the dead one's session.
        instance = {"group_instance_id": kafka.group_instance_id} if group_id and kafka.group_instance_id else {}
        return await self._started(f"the {group_id or 'offsets'} consumer",
                                   lambda: make_consumer(kafka, group_id=group_id, **instance),
                                   AIOKafkaConsumer.start, AIOKafkaConsumer.stop)

    async def offsets(self) -> AIOKafkaConsumer:
        """One group-less consumer for reading log offsets (queue depth)."""
        return await self._once("offsets", lambda: self.consumer(None))

    async def admin(self) -> AIOKafkaAdminClient:
        async def make() -> AIOKafkaAdminClient:
            return await self._started("the admin client", lambda: make_admin(self.connections.kafka),
                                       AIOKafkaAdminClient.start, AIOKafkaAdminClient.close)

        return await self._once("admin", make)

    async def consumer_loop(self, handler: Handler, settings: LoopSettings) -> ConsumerLoop:
        """The at-least-once loop over ``settings.topics`` for ``settings.group_id``, on the shared producer."""
        consumer = await self.consumer(settings.group_id)
        return ConsumerLoop(consumer, await self.producer(), handler, settings, self.readiness)

    # -- Redis and what lives in it

    @property
    def redis(self) -> Redis:
        if "redis" not in self._made:
            client = make_redis(self.connections.redis)
            self._stack.push_async_callback(client.aclose)
            self._made["redis"] = client
        return self._made["redis"]

    @property
    def budget(self) -> RedisBudgetLedger:
        """The paid path's monthly ledger, shared by routers, generators, the comparer and ingest."""
        if "budget" not in self._made:
            settings = self.budget_settings
            journal = S3SpendJournal(
                self.connections.s3, bucket=settings.journal_bucket,
                prefix=f"{settings.journal_prefix.strip('/')}/{journal_namespace(self.keys.prefix)}",
            ) if settings.journal else None
            self._made["budget"] = RedisBudgetLedger(
                self.redis, self.keys, cap_micros=usd(settings.cap_usd),
                reservation_ttl_s=settings.reservation_ttl_s, journal=journal,
                tenants=TenantStore(self.redis, self.keys))  # each tenant's own cap (``forgeline tenants --budget``)
        return self._made["budget"]

    def jobs(self, *, ttl_s: int | None = None) -> RedisJobStore:
        return RedisJobStore(self.redis, self.keys) if ttl_s is None else RedisJobStore(self.redis, self.keys,
                                                                                        ttl_s=ttl_s)

    def terminal_guard(self) -> RedisTerminalGuard:
        return RedisTerminalGuard(self.redis, self.keys)

    # -- HTTP and S3

    async def http(self) -> httpx.AsyncClient:
        """One connection pool for every provider adapter of the process (no client retries: ours)."""
        return await self._once("http", lambda: self.enter(make_http_client()))

    @property
    def blobs(self) -> S3BlobStore:
        if "blobs" not in self._made:
            self._made["blobs"] = S3BlobStore(self.connections.s3)
        return self._made["blobs"]


@asynccontextmanager
async def bootstrap(connections: Connections, *, budget: BudgetSettings | None = None,
                    environ: Mapping[str, str] | None = None, readiness: Readiness | None = None,
                    cache: CacheSettings | None = None) -> AsyncIterator[Infra]:
    """The process's :class:`Infra`; every client it made is closed on exit, in reverse order.

    ``budget``: the monthly cap (None: read from ``FORGELINE_BUDGET_*``). ``environ``: where provider
    keys named by the providers file are read (None: nowhere, so no keys). ``readiness``: what the
    process's ``/readyz`` reports (None: a fresh one nobody serves). ``cache``: the result cache's scope
    (None: read from ``FORGELINE_CACHE_*``).
    """
    async with AsyncExitStack() as stack:
        yield Infra(
            connections=connections,
            budget_settings=budget or BudgetSettings(),
            environ=dict(environ or {}),
            topics=Topics.from_settings(connections.topics),
            groups=GroupIds.from_settings(connections.topics),
            keys=KeySpace(connections.redis.key_prefix),
            _stack=stack,
            readiness=readiness or Readiness(),
            cache_scope=CacheScope.from_settings(cache or CacheSettings()),
        )
