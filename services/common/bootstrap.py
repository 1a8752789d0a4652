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

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from services.common.blobstore import S3BlobStore
from services.common.budget import RedisBudgetLedger, usd
from services.common.consumer import ConsumerLoop, Handler, LoopSettings
from services.common.health import Readiness
from services.common.jobs import RedisJobStore, RedisTerminalGuard
from services.common.kafka import make_admin, make_consumer, make_producer
from services.common.redis import KeySpace, make_redis
from services.common.settings import BudgetSettings, Connections
from services.common.spend_journal import S3SpendJournal, journal_namespace
from services.common.topics import GroupIds, Topics

__all__ = ["Infra", "bootstrap"]

T = TypeVar("T")


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
    _made: dict[str, Any] = field(default_factory=dict)

    async def _once(self, name: str, make: Callable[[], Awaitable[T]]) -> T:
        if name not in self._made:
            self._made[name] = await make()
        return self._made[name]

    async def _started(self, client: T, start: Callable[[], Awaitable[Any]],
                       close: Callable[[], Awaitable[Any]]) -> T:
        """Start ``client`` and register its cleanup; a client whose start fails is closed at once."""
        try:
            await start()
        except BaseException:
            await close()
            raise
        self._stack.push_async_callback(close)
        return client

    async def enter(self, context: AbstractAsyncContextManager[T]) -> T:
        """Enter a service's own resource (a fetcher, a server) so it closes with the rest."""
        return await self._stack.enter_async_context(context)

    # -- Kafka

    async def producer(self) -> AIOKafkaProducer:
        """The process's one producer (idempotent, ``acks=all``)."""

        async def make() -> AIOKafkaProducer:
            producer = make_producer(self.connections.kafka)
            return await self._started(producer, producer.start, producer.stop)

        return await self._once("producer", make)

    async def consumer(self, group_id: str | None) -> AIOKafkaConsumer:
        """A new started consumer; with ``group_id=None`` it only reads offsets (no subscription, no commits)."""
        consumer = make_consumer(self.connections.kafka, group_id=group_id)
        return await self._started(consumer, consumer.start, consumer.stop)

    async def offsets(self) -> AIOKafkaConsumer:
        """One group-less consumer for reading log offsets (queue depth)."""
        return await self._once("offsets", lambda: self.consumer(None))

    async def admin(self) -> AIOKafkaAdminClient:
        async def make() -> AIOKafkaAdminClient:
            admin = make_admin(self.connections.kafka)
            return await self._started(admin, admin.start, admin.close)

        return await self._once("admin", make)

    async def consumer_loop(self, handler: Handler, settings: LoopSettings) -> ConsumerLoop:
        """The at-least-once loop over ``settings.topics`` for ``settings.group_id``, on the shared producer."""
        consumer = await self.consumer(settings.group_id)
        return ConsumerLoop(consumer, await self.producer(), handler, settings)

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
                reservation_ttl_s=settings.reservation_ttl_s, journal=journal)
        return self._made["budget"]

    def jobs(self, *, ttl_s: int | None = None) -> RedisJobStore:
        return RedisJobStore(self.redis, self.keys) if ttl_s is None else RedisJobStore(self.redis, self.keys,
                                                                                        ttl_s=ttl_s)

    def terminal_guard(self) -> RedisTerminalGuard:
        return RedisTerminalGuard(self.redis, self.keys)

    # -- HTTP and S3

    async def http(self) -> httpx.AsyncClient:
        """One connection pool for every provider adapter of the process (no client retries: ours)."""
        return await self._once("http", lambda: self.enter(httpx.AsyncClient()))

    @property
    def blobs(self) -> S3BlobStore:
        if "blobs" not in self._made:
            self._made["blobs"] = S3BlobStore(self.connections.s3)
        return self._made["blobs"]


@asynccontextmanager
async def bootstrap(connections: Connections, *, budget: BudgetSettings | None = None,
                    environ: Mapping[str, str] | None = None, readiness: Readiness | None = None,
                    ) -> AsyncIterator[Infra]:
    """The process's :class:`Infra`; every client it made is closed on exit, in reverse order.

    ``budget``: the monthly cap (None: read from ``FORGELINE_BUDGET_*``). ``environ``: where provider
    keys named by the providers file are read (None: nowhere, so no keys). ``readiness``: what the
    process's ``/readyz`` reports (None: a fresh one nobody serves).
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
        )
