"""The ports: what the services need of shared state and storage, as ``typing.Protocol``s.

Handlers and the failover loop are written against these, never against Redis or S3. Each port
has two implementations that pass the same contract tests (``tests/contracts/``):

=============  ==========================================  ======================================
port           production adapter                          in-memory fake (``tests/fakes.py``)
=============  ==========================================  ======================================
KeyPool        ``keypool.RedisKeyPool``                    ``MemoryKeyPool``
JobStore       ``jobs.RedisJobStore``                      ``MemoryJobStore``
TerminalGuard  ``jobs.RedisTerminalGuard``                 ``MemoryTerminalGuard``
BudgetLedger   ``budget.RedisBudgetLedger``                ``MemoryBudgetLedger``
Breaker        ``breaker.RedisCircuitBreaker``             ``MemoryBreaker``
BlobStore      ``blobstore.S3BlobStore``                   ``MemoryBlobStore``
ResultCache    ``cache.RedisResultCache``                  ``MemoryResultCache``
RouteStats     ``route_stats.RedisRouteStats``             ``MemoryRouteStats``
RecentJobs     ``recent_jobs.RedisRecentJobs``             ``MemoryRecentJobs``
ProviderCalls  ``provider_calls.RedisProviderCalls``       ``MemoryProviderCalls``
SpendJournal   ``spend_journal.S3SpendJournal``            ``MemorySpendJournal``
=============  ==========================================  ======================================

The Redis adapters are shared by every replica at once (Lua scripts where several keys must
change together); a fake is one process's truth, which is all a unit test needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from services.common.breaker import BreakerState
    from services.common.budget import BudgetSnapshot, Reservation, TenantSpend
    from services.common.contracts import GenerationCompleted
    from services.common.jobs import JobStatus, JobView, Terminal
    from services.common.keypool import ApiKey, KeyState
    from services.common.provider_calls import PaidCall
    from services.common.spend_journal import SpendEntry

__all__ = ["BlobStore", "Breaker", "BudgetLedger", "JobStore", "KeyPool", "ProviderCalls", "RecentJobs", "ResultCache",
           "RouteStats", "SpendJournal", "TerminalGuard"]


class KeyPool(Protocol):
    """One provider's API keys: round-robin over the healthy ones, cooldowns and disables shared."""

    @property
    def provider(self) -> str: ...

    @property
    def keys(self) -> tuple[ApiKey, ...]: ...

    async def pick(self) -> ApiKey:
        """The next usable key; raises ``NoKeyAvailable`` (with when the first one comes back) if none is."""

    async def cooldown(self, key: ApiKey | str, seconds: float | None, reason: str) -> float:
        """Cool ``key`` for ``seconds`` (the later deadline wins); returns the deadline (epoch seconds)."""

    async def disable(self, key: ApiKey | str, reason: str) -> None: ...

    async def enable(self, key_id: str) -> bool:
        """Re-enable a disabled key (by id or masked form); False when the pool has no such key."""

    async def record(self, key: ApiKey | str, ok: bool) -> None: ...

    async def states(self) -> list[KeyState]: ...


class JobStore(Protocol):
    """Job status that only moves forward (``queued → routed → … → completed | failed``)."""

    async def update(self, job_id: str, status: JobStatus, *, frees_slot: bool = True, **fields: Any) -> bool:
        """Move the job to ``status`` with ``fields``; False when the change was stale.

        A terminal status frees the job's in-flight slot under its tenant's cap, unless ``frees_slot``
        is False: a job that never took one (a cache hit) saves the call.
        """

    async def get(self, job_id: str) -> JobView | None: ...

    async def changes(self, job_id: str, after: str = "0", block_ms: int = 2_000) -> list[tuple[str, JobView]]:
        """Status changes after change id ``after``, waiting up to ``block_ms`` for the first."""

    async def mark_forwarded(self, job_id: str) -> None:
        """The router's routed record of the job was acknowledged: a later copy of its request is dropped."""

    async def forwarded(self, job_id: str) -> bool: ...


class TerminalGuard(Protocol):
    """Exactly one terminal event per job reaches the results topics."""

    async def claim(self, event: Terminal) -> Terminal | None:
        """The terminal event to publish for ``event.job_id`` (the first one claimed), or None once published.

        Raises ``TerminalBeingPublished`` (Retryable) while another task holds the job's publishing lease.
        """

    async def mark_published(self, job_id: str) -> None: ...

    async def finished(self, job_id: str) -> bool:
        """True once a terminal event was claimed for ``job_id``: nothing more needs generating."""


class BudgetLedger(Protocol):
    """Paid spend against a monthly cap: reserve before a paid call, settle or refund after."""

    cap_micros: int

    async def reserve(self, job_id: str, cost_micros: int, *, tenant: str | None = None) -> Reservation | None:
        """A hold on ``cost_micros``, or None when it would pass the cap (or the spend cannot be known).

        ``job_id`` names the paid call (``Failover`` passes ``<job>:<provider>:<seq>``): repeating it
        returns its hold, so a replay of the same call reserves once. With ``tenant``, the hold must
        fit that tenant's own monthly cap as well, in the same atomic step.
        """

    async def settle(self, reservation: Reservation, actual_cost_micros: int | None = None) -> bool: ...

    async def refund(self, reservation: Reservation) -> bool: ...

    async def snapshot(self, month: str | None = None) -> BudgetSnapshot: ...

    async def snapshot_with_tenant(self, tenant: str) -> tuple[BudgetSnapshot, TenantSpend]:
        """This month's ``snapshot`` and ``tenant_snapshot`` in one read (a Redis ledger: one script call)."""

    async def tenant_snapshot(self, tenant: str, month: str | None = None) -> TenantSpend:
        """One tenant's spend, holds and own cap this month, after abandoned holds are given back."""

    async def tenant_spend(self, month: str | None = None) -> dict[str, TenantSpend]:
        """Every tenant that reserved this month."""


class Breaker(Protocol):
    """A provider's circuit breaker: open after N retryable failures in a row, for a cooldown."""

    provider: str

    async def allows(self) -> bool: ...

    async def success(self) -> None: ...

    async def failure(self) -> float | None:
        """Count a failure; returns when the provider comes back if this one opened the breaker."""

    async def state(self) -> BreakerState: ...


class BlobStore(Protocol):
    """Objects under keys, each with a public (CDN) URL."""

    async def put(self, key: str, data: bytes, *, content_type: str, cache_control: str = ...,
                  sha256: str | None = None) -> str:
        """Store ``data`` under ``key`` and return its public URL.

        ``sha256``: the data's SHA-256 in hex, when the caller has it (a signed upload then need not hash the
        body again); a store that checks it refuses the upload if it is not the data's."""

    async def exists(self, key: str) -> bool: ...

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``; ``KeyError`` if there are none."""

    def public_url(self, key: str) -> str: ...


class ResultCache(Protocol):
    """``cache_key → GenerationCompleted`` for requests already served."""

    async def get(self, cache_key: str) -> GenerationCompleted | None: ...

    def peek_local(self, cache_key: str) -> GenerationCompleted | None:
        """What this process holds in memory for ``cache_key`` (no I/O, not counted): ingest's fast path asks."""

    async def put(self, cache_key: str, completed: GenerationCompleted) -> None: ...

    async def stats(self) -> dict[str, int]:
        """Lookups by outcome: ``hit_local``, ``hit_redis``, ``miss``."""


class RouteStats(Protocol):
    """How many jobs each path was sent, across every router replica: ``/v1/status``'s route split."""

    async def count(self, path: str) -> None:
        """Count one job sent to ``path``."""

    async def counts(self) -> dict[str, int]:
        """Jobs sent, by path; a path nothing was sent to is absent."""


class RecentJobs(Protocol):
    """The ids of the latest completed generations, newest first, capped: the dashboard's gallery."""

    async def add(self, job_id: str) -> None:
        """Put ``job_id`` first (a replay's second add moves it, never lists it twice); the oldest beyond the cap go."""

    async def latest(self, limit: int) -> list[str]:
        """Up to ``limit`` ids, newest first."""


class ProviderCalls(Protocol):
    """The paid calls a job has made, per provider: a replay resumes its call instead of paying again.

    A job's calls to one provider are numbered from 1; ``current`` is the one a new attempt makes
    or resumes. ``close`` ends it without an image (it failed, was cancelled), so the next attempt
    makes call ``seq + 1``; a call that succeeded stays current, and a replay collects its output.
    """

    async def current(self, job_id: str, provider: str) -> PaidCall:
        """The current call: its ``seq`` and, once the provider named it, its ``call_id``."""

    async def claim(self, job_id: str, provider: str, seq: int, ttl_s: float) -> bool:
        """Take the right to create call ``seq`` for ``ttl_s`` (``SET NX`` with a deadline); False if held."""

    async def record(self, job_id: str, provider: str, seq: int, call_id: str) -> bool:
        """Remember the provider's id of call ``seq``; False when that call is no longer current."""

    async def close(self, job_id: str, provider: str, seq: int) -> None:
        """Call ``seq`` is over without an image: the next attempt makes a new one."""


class SpendJournal(Protocol):
    """A durable record of paid calls outside Redis, from which a lost budget ledger is rebuilt."""

    async def write(self, entry: SpendEntry) -> None:
        """Store ``entry``; a later entry of the same reservation replaces it. Raises if it was not stored."""

    async def month(self, month: str) -> list[SpendEntry]:
        """Every entry of ``month``; raises ``SpendJournalUnavailable`` when they cannot be read."""
