"""The ``impl`` fixture: each contract test runs once per implementation of its port.

``impl`` is a ``Backend``: it builds fresh implementations of every port, all in memory
(``tests/fakes.py``) or all real (Redis under this test's own key prefix, S3 under its own
object prefix). A module tests one port; it runs against ``memory`` and ``redis`` unless it
names its backends in ``BACKENDS`` (the blob store's are ``memory`` and ``s3``). The real ones
are marked ``integration``: ``-m "not integration"`` runs the fakes alone, without services.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import pytest

from services.common.blobstore import S3BlobStore
from services.common.breaker import RedisCircuitBreaker
from services.common.budget import RedisBudgetLedger, TenantBudgets
from services.common.cache import LruTtlCache, RedisResultCache
from services.common.contracts import GenerationCompleted
from services.common.jobs import RedisJobStore, RedisTerminalGuard
from services.common.keypool import ApiKey, RedisKeyPool
from services.common.ports import (
    BlobStore,
    Breaker,
    BudgetLedger,
    JobStore,
    KeyPool,
    ProviderCalls,
    RecentJobs,
    ResultCache,
    RouteStats,
    SpendJournal,
    TerminalGuard,
)
from services.common.provider_calls import RedisProviderCalls
from services.common.recent_jobs import RedisRecentJobs
from services.common.redis import KeySpace
from services.common.route_stats import RedisRouteStats
from services.common.spend_journal import S3SpendJournal, journal_namespace
from tests.fakes import (
    MemoryBlobStore,
    MemoryBreaker,
    MemoryBudgetLedger,
    MemoryJobStore,
    MemoryKeyPool,
    MemoryProviderCalls,
    MemoryRecentJobs,
    MemoryResultCache,
    MemoryRouteStats,
    MemorySpendJournal,
    MemoryTerminalGuard,
)

REAL = ("redis", "s3")


class Backend(Protocol):
    """Fresh implementations of every port, with the options the contract tests vary."""

    name: str

    def key_pool(self, provider: str, api_keys: Sequence[ApiKey], *, clock: Callable[[], float]) -> KeyPool: ...

    def job_store(self) -> JobStore: ...

    def terminal_guard(self) -> TerminalGuard: ...

    def budget_ledger(self, *, cap_micros: int, clock: Callable[[], datetime],
                      reservation_ttl_s: float = 15 * 60, journal: SpendJournal | None = None,
                      tenants: TenantBudgets | None = None) -> BudgetLedger: ...

    async def lose_budget(self, ledger: BudgetLedger) -> None:
        """Forget the ledger's state, as a Redis restarting without its data would."""

    def spend_journal(self) -> SpendJournal: ...

    def broken_journal(self) -> SpendJournal:
        """A journal that can be neither read nor written (the real one: a bucket that does not exist)."""

    def provider_calls(self) -> ProviderCalls: ...

    def breaker(self, provider: str, *, threshold: int, cooldown_s: float, clock: Callable[[], float]) -> Breaker: ...

    def blob_store(self) -> BlobStore: ...

    def result_cache(self, *, local: LruTtlCache[GenerationCompleted] | None = None) -> ResultCache: ...

    def route_stats(self) -> RouteStats: ...

    def recent_jobs(self, *, capacity: int) -> RecentJobs: ...


class MemoryBackend:
    name = "memory"

    def key_pool(self, provider, api_keys, *, clock):
        return MemoryKeyPool(provider, api_keys, clock=clock)

    def job_store(self):
        return MemoryJobStore()

    def terminal_guard(self):
        return MemoryTerminalGuard()

    def budget_ledger(self, *, cap_micros, clock, reservation_ttl_s=15 * 60, journal=None, tenants=None):
        return MemoryBudgetLedger(cap_micros=cap_micros, clock=clock, reservation_ttl_s=reservation_ttl_s,
                                  journal=journal, tenants=tenants)

    async def lose_budget(self, ledger):
        ledger.forget()

    def spend_journal(self):
        return MemorySpendJournal()

    def broken_journal(self):
        journal = MemorySpendJournal()
        journal.broken = True
        return journal

    def provider_calls(self):
        return MemoryProviderCalls()

    def breaker(self, provider, *, threshold, cooldown_s, clock):
        return MemoryBreaker(provider, threshold=threshold, cooldown_s=cooldown_s, clock=clock)

    def blob_store(self):
        return MemoryBlobStore()

    def result_cache(self, *, local=None):
        return MemoryResultCache(local=local)

    def route_stats(self):
        return MemoryRouteStats()

    def recent_jobs(self, *, capacity):
        return MemoryRecentJobs(capacity)


class RealBackend:
    """The production adapters; everything lives under the test's own Redis key prefix and S3 prefix."""

    def __init__(self, name: str, redis, connections) -> None:
        self.name = name
        self._redis = redis
        self._keys = KeySpace(connections.redis.key_prefix)
        self._s3 = connections.s3

    def key_pool(self, provider, api_keys, *, clock):
        return RedisKeyPool(self._redis, self._keys, provider, api_keys, clock=clock)

    def job_store(self):
        return RedisJobStore(self._redis, self._keys)

    def terminal_guard(self):
        return RedisTerminalGuard(self._redis, self._keys)

    def budget_ledger(self, *, cap_micros, clock, reservation_ttl_s=15 * 60, journal=None, tenants=None):
        return RedisBudgetLedger(self._redis, self._keys, cap_micros=cap_micros, clock=clock,
                                 reservation_ttl_s=reservation_ttl_s, journal=journal, tenants=tenants)

    async def lose_budget(self, ledger):
        doomed = [key async for key in self._redis.scan_iter(match=self._keys.key("{budget}") + "*")]
        if doomed:
            await self._redis.delete(*doomed)

    def spend_journal(self):
        return S3SpendJournal(self._s3, prefix=f"tests/{journal_namespace(self._keys.prefix)}/billing")

    def broken_journal(self):
        return S3SpendJournal(self._s3, prefix="tests/billing", bucket="forgeline-no-such-bucket")

    def provider_calls(self):
        return RedisProviderCalls(self._redis, self._keys)

    def breaker(self, provider, *, threshold, cooldown_s, clock):
        return RedisCircuitBreaker(self._redis, self._keys, provider, threshold=threshold, cooldown_s=cooldown_s,
                                   clock=clock)

    def blob_store(self):
        return S3BlobStore(self._s3)

    def result_cache(self, *, local=None):
        return RedisResultCache(self._redis, self._keys, ttl_s=3600,
                                local=local if local is not None else LruTtlCache(0, 0))

    def route_stats(self):
        return RedisRouteStats(self._redis, self._keys)

    def recent_jobs(self, *, capacity):
        return RedisRecentJobs(self._redis, self._keys, capacity=capacity)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "impl" in metafunc.fixturenames:
        backends = getattr(metafunc.module, "BACKENDS", ("memory", "redis"))
        metafunc.parametrize("impl", [pytest.param(name, marks=[pytest.mark.integration] if name in REAL else [])
                                      for name in backends], indirect=True)


@pytest.fixture
def impl(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return MemoryBackend()
    # Asked for here, not in the signature: the fakes' runs need no services at all.
    return RealBackend(request.param, request.getfixturevalue("redis"), request.getfixturevalue("connections"))


@pytest.fixture
def blob_key(unique: str) -> Callable[[str], str]:
    """Object keys of this test alone (the real bucket is shared by every test)."""
    return lambda name: f"tests/{unique}/{name}"
