"""In-memory fakes of every port in ``services/common/ports.py``, for unit tests.

Each fake keeps the semantics of its production adapter — the subtle ones too — and passes the
same contract tests (``tests/contracts/``), so a handler tested against a fake is tested against
what Redis or S3 would do. Each takes the adapter's clock parameter, so a test drives time.

What a fake leaves out is what a single process cannot observe in a unit test: Redis TTLs on
job records, terminal markers, cache entries and budget replay records (they run on Redis's
clock, not the injected one), and the metrics the adapters export.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import math
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from services.common.blobstore import IMMUTABLE_CACHE_CONTROL, BlobStoreError
from services.common.breaker import BreakerState
from services.common.budget import BudgetSnapshot, Reservation, TenantBudget, TenantSpend, month_of
from services.common.cache import LruTtlCache
from services.common.contracts import GenerationCompleted, ImageSpec, utcnow
from services.common.jobs import RANK, JobStatus, JobView, Terminal, TerminalBeingPublished, encode_fields, lease_holder
from services.common.keypool import (
    DEFAULT_COOLDOWN_S,
    MAX_COOLDOWN_S,
    MIN_COOLDOWN_S,
    ApiKey,
    KeyState,
    KeyStatus,
    NoKeyAvailable,
    resolve_key,
)
from services.common.provider_calls import PaidCall
from services.common.spend_journal import EntryState, SpendEntry, SpendJournalUnavailable
from services.providers.port import GeneratedImage, JobAlreadyFinished, ResumableCall

__all__ = [
    "FAKE_PNG",
    "FakeImageProvider",
    "FakeResumableProvider",
    "MemoryBlobStore",
    "MemoryBreaker",
    "MemoryBudgetLedger",
    "MemoryJobStore",
    "MemoryKeyPool",
    "MemoryProviderCalls",
    "MemoryResultCache",
    "MemoryRouteStats",
    "MemorySpendJournal",
    "MemoryTerminalGuard",
]


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


# ------------------------------------------------------------------------------------ key pool


@dataclasses.dataclass
class _KeyInfo:
    successes: int = 0
    failures: int = 0
    cooldown_reason: str | None = None
    disabled_reason: str | None = None
    disabled_at: float | None = None


class MemoryKeyPool:
    """``KeyPool`` in a dict: the same cursor walk as ``RedisKeyPool``'s pick script."""

    def __init__(self, provider: str, api_keys: Sequence[ApiKey], *, clock: Callable[[], float] = time.time) -> None:
        wrong = [key.key_id for key in api_keys if key.provider != provider]
        if wrong:
            raise ValueError(f"keys of another provider given to the {provider} pool: {', '.join(wrong)}")
        self._provider = provider
        self._keys = tuple({key.key_id: key for key in api_keys}.values())
        self._clock = clock
        self._cursor = 0
        self._deadlines: dict[str, float] = {}
        self._disabled: set[str] = set()
        self._info = {key.key_id: _KeyInfo() for key in self._keys}

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return self._keys

    def _resolve(self, key: ApiKey | str) -> ApiKey:
        return resolve_key(self._provider, self._keys, key)

    async def pick(self) -> ApiKey:
        if not self._keys:
            raise NoKeyAvailable(self._provider, None, f"no {self._provider} API keys are configured")
        now, n = self._clock(), len(self._keys)
        start = self._cursor
        self._cursor += 1
        earliest: float | None = None
        for step in range(n):
            key = self._keys[(start + step) % n]
            if key.key_id in self._disabled:
                continue
            deadline = self._deadlines.get(key.key_id, 0.0)
            if deadline <= now:
                self._cursor += step  # past the picked key: the healthy ones share a cooling key's turns
                return key
            earliest = deadline if earliest is None else min(earliest, deadline)
        if earliest is None:
            raise NoKeyAvailable(self._provider, None)
        raise NoKeyAvailable(self._provider, max(0.0, earliest - now))

    async def cooldown(self, key: ApiKey | str, seconds: float | None, reason: str) -> float:
        key = self._resolve(key)
        wait = DEFAULT_COOLDOWN_S if seconds is None or not math.isfinite(seconds) else seconds
        wait = min(max(wait, MIN_COOLDOWN_S), MAX_COOLDOWN_S)
        deadline = self._clock() + wait
        current = self._deadlines.get(key.key_id, 0.0)
        if deadline <= current:
            return current
        self._deadlines[key.key_id] = deadline
        self._info[key.key_id].cooldown_reason = reason
        return deadline

    async def disable(self, key: ApiKey | str, reason: str) -> None:
        key = self._resolve(key)
        self._disabled.add(key.key_id)
        info = self._info[key.key_id]
        info.disabled_reason, info.disabled_at = reason, self._clock()

    async def enable(self, key_id: str) -> bool:
        key = self._resolve(key_id)
        if key.key_id not in self._disabled:
            return False
        self._disabled.discard(key.key_id)
        info = self._info[key.key_id]
        info.disabled_reason, info.disabled_at = None, None
        return True

    async def record(self, key: ApiKey | str, ok: bool) -> None:
        info = self._info[self._resolve(key).key_id]
        if ok:
            info.successes += 1
        else:
            info.failures += 1

    async def states(self) -> list[KeyState]:
        now = self._clock()
        result = []
        for key in self._keys:
            info = self._info[key.key_id]
            deadline = self._deadlines.get(key.key_id)
            cooling = deadline is not None and deadline > now
            state: KeyStatus = ("disabled" if key.key_id in self._disabled
                                else "cooling_down" if cooling else "healthy")
            disabled = state == "disabled"
            result.append(KeyState(
                provider=self._provider, key_id=key.key_id, masked=key.masked, state=state,
                cooldown_until=_utc(deadline) if cooling and deadline is not None else None,
                cooldown_reason=info.cooldown_reason if cooling else None,
                disabled_reason=info.disabled_reason if disabled else None,
                disabled_at=_utc(info.disabled_at) if disabled and info.disabled_at is not None else None,
                successes=info.successes, failures=info.failures,
            ))
        return result


# ------------------------------------------------------------------------------------ jobs


class MemoryJobStore:
    """``JobStore`` in dicts, with ``RedisJobStore``'s update rule and a change log per job."""

    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, str]] = {}
        self._forwarded: set[str] = set()
        self._changes: dict[str, list[tuple[int, JobView]]] = {}
        self._ids = itertools.count(1)  # change ids "<n>-0": opaque to callers, ordered like stream ids
        self._appended = asyncio.Event()

    async def mark_forwarded(self, job_id: str) -> None:
        self._forwarded.add(job_id)

    async def forwarded(self, job_id: str) -> bool:
        return job_id in self._forwarded

    async def update(self, job_id: str, status: JobStatus, *, frees_slot: bool = True, **fields: Any) -> bool:
        record = self._jobs.setdefault(job_id, {})
        current, rank = int(record.get("rank", -1)), RANK[status]
        if current >= 4:
            return False
        encoded = encode_fields(fields)  # the Redis hash's encoding: a JobView reads the same from either
        if rank < current:
            for name, value in encoded.items():
                record.setdefault(name, value)
            return False
        now = utcnow().isoformat()
        record.update(encoded)
        record.update(status=status, rank=str(rank), updated_at=now)
        record.setdefault("created_at", now)
        if rank > current:
            log = self._changes.setdefault(job_id, [])
            log.append((next(self._ids), JobView.from_hash(job_id, record)))
            del log[:-64]  # the stream's MAXLEN
            self._appended.set()
            self._appended = asyncio.Event()
        return True

    async def get(self, job_id: str) -> JobView | None:
        record = self._jobs.get(job_id)
        return JobView.from_hash(job_id, record) if record else None

    async def changes(self, job_id: str, after: str = "0", block_ms: int = 2_000) -> list[tuple[str, JobView]]:
        found = self._after(job_id, after)
        if not found and block_ms > 0:
            appended = self._appended
            try:
                async with asyncio.timeout(block_ms / 1000):
                    while not (found := self._after(job_id, after)):
                        await appended.wait()
                        appended = self._appended
            except TimeoutError:
                return []
        return found[:64]

    def _after(self, job_id: str, after: str) -> list[tuple[str, JobView]]:
        mark = int(after.partition("-")[0])
        return [(f"{n}-0", view) for n, view in self._changes.get(job_id, []) if n > mark]


class MemoryTerminalGuard:
    """``TerminalGuard`` in a dict: first claim wins, replays get it back until it is published; a
    claim from another task while the first one's publishing lease lasts raises TerminalBeingPublished."""

    def __init__(self, lease_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._claimed: dict[str, Terminal] = {}
        self._published: set[str] = set()
        self._leases: dict[str, tuple[str, float]] = {}  # job → (holder, until)
        self._lease_s = lease_s
        self._clock = clock

    async def claim(self, event: Terminal) -> Terminal | None:
        if event.job_id not in self._claimed:
            self._claimed[event.job_id] = event
            self._take_lease(event.job_id)
            return event
        if event.job_id in self._published:
            return None
        self._take_lease(event.job_id)
        return self._claimed[event.job_id]

    def _take_lease(self, job_id: str) -> None:
        holder, until = self._leases.get(job_id, (None, 0.0))
        me, now = lease_holder(), self._clock()
        if holder is not None and holder != me and now < until:
            raise TerminalBeingPublished(f"job {job_id}: another replica is publishing its terminal event")
        self._leases[job_id] = (me, now + self._lease_s)

    async def mark_published(self, job_id: str) -> None:
        self._published.add(job_id)

    async def finished(self, job_id: str) -> bool:
        return job_id in self._claimed


# ------------------------------------------------------------------------------------ budget


@dataclasses.dataclass
class _Month:
    spent: int = 0
    reserved: int = 0
    held: dict[str, int] = dataclasses.field(default_factory=dict)  # reservation id → cost
    expiry_ms: dict[str, int] = dataclasses.field(default_factory=dict)  # reservation id → when given back
    closed: set[str] = dataclasses.field(default_factory=set)
    journaled: bool = False
    owners: dict[str, str] = dataclasses.field(default_factory=dict)  # reservation id → tenant
    tenants: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # tenant → [spent, reserved]

    def tenant(self, name: str) -> list[int]:
        return self.tenants.setdefault(name, [0, 0])

    def release(self, rid: str) -> int:
        """Give a hold back, from the month's and its tenant's reserved; its cost (0: not held)."""
        held = self.held.pop(rid, 0)
        self.expiry_ms.pop(rid, None)
        self.reserved -= held
        if rid in self.owners:
            self.tenant(self.owners[rid])[1] -= held
        return held


@dataclasses.dataclass
class _JobRecord:
    reservation_id: str
    cost: int
    month: str
    expires_ms: int
    state: str  # reserved | settled | refunded


class MemoryBudgetLedger:
    """``BudgetLedger`` in dicts, with ``RedisBudgetLedger``'s scripts' rules: cap, replay, expiry, close once."""

    def __init__(self, *, cap_micros: int, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 reservation_ttl_s: float = 15 * 60, journal: MemorySpendJournal | None = None,
                 tenants: MemoryTenantBudgets | None = None) -> None:
        if cap_micros < 0:
            raise ValueError("cap_micros must be >= 0")
        self.cap_micros = cap_micros
        self._tenants = tenants or MemoryTenantBudgets()
        self._journal = journal
        self._clock = clock
        self._ttl_ms = int(reservation_ttl_s * 1000)
        self._months: dict[str, _Month] = {}
        self._jobs: dict[str, _JobRecord] = {}
        self._rebuilding = asyncio.Lock()  # one journal read at a time, as the Redis ledger's

    def current_month(self) -> str:
        return month_of(self._clock())

    def _now_ms(self) -> int:
        return int(self._clock().timestamp() * 1000)

    def _swept(self, month: str, now_ms: int) -> _Month:
        """The month's totals after giving back holds whose expiry passed (a holder that crashed)."""
        totals = self._months.setdefault(month, _Month())
        for rid in [rid for rid, expiry in totals.expiry_ms.items() if expiry <= now_ms]:
            totals.release(rid)
        return totals

    def forget(self) -> None:
        """Lose every total and record, as a Redis restarting without its data would."""
        self._months.clear()
        self._jobs.clear()

    async def _rebuilt(self, month: str) -> bool:
        """The close script's rebuild: settled entries spent, held ones held, closed ones skipped."""
        if self._journal is None or self._months.setdefault(month, _Month()).journaled:
            return True
        async with self._rebuilding:
            return await self._rebuild(month)

    async def _rebuild(self, month: str) -> bool:
        totals = self._months.setdefault(month, _Month())
        if totals.journaled:  # rebuilt while this caller waited for the lock
            return True
        try:
            entries = await self._journal.month(month)
        except SpendJournalUnavailable:
            return False
        for entry in entries:
            rid = entry.reservation_id
            if rid in totals.closed or rid in totals.held:
                continue
            if entry.tenant:
                totals.owners[rid] = entry.tenant
            if entry.state == "settled":
                totals.spent += entry.cost_micros
                if entry.tenant:
                    totals.tenant(entry.tenant)[0] += entry.cost_micros
                totals.closed.add(rid)
            elif entry.state == "refunded":
                totals.closed.add(rid)
            else:
                totals.reserved += entry.cost_micros
                if entry.tenant:
                    totals.tenant(entry.tenant)[1] += entry.cost_micros
                totals.held[rid] = entry.cost_micros
                totals.expiry_ms[rid] = entry.expires_ms
        totals.journaled = True
        return True

    async def _write(self, reservation: Reservation, state: EntryState, cost: int) -> bool:
        if self._journal is None:
            return True
        try:
            await self._journal.write(SpendEntry(reservation.reservation_id, reservation.job_id, reservation.month,
                                                 cost, state, int(reservation.expires_at.timestamp() * 1000),
                                                 reservation.tenant))
        except SpendJournalUnavailable:
            return False
        return True

    async def reserve(self, job_id: str, cost_micros: int, *, tenant: str | None = None) -> Reservation | None:
        if cost_micros <= 0:
            raise ValueError("cost_micros must be > 0")
        now_ms = self._now_ms()
        month = self.current_month()
        if not await self._rebuilt(month):
            return None
        totals = self._swept(month, now_ms)
        job = self._jobs.get(job_id)
        if job is not None and (job.state == "settled" or (job.state == "reserved" and job.expires_ms > now_ms)):
            return self._reservation(job_id, job, replayed=True, tenant=tenant)
        if totals.spent + totals.reserved + cost_micros > self.cap_micros:
            return None
        tenant_cap = (await self._tenants.budget(tenant)).cap_micros if tenant else None
        if tenant and tenant_cap is not None and sum(totals.tenant(tenant)) + cost_micros > tenant_cap:
            return None
        rid = f"{job_id}:{uuid.uuid4().hex[:12]}"
        totals.reserved += cost_micros
        totals.held[rid] = cost_micros
        totals.expiry_ms[rid] = now_ms + self._ttl_ms
        if tenant:
            totals.owners[rid] = tenant
            totals.tenant(tenant)[1] += cost_micros
        job = self._jobs[job_id] = _JobRecord(rid, cost_micros, month, now_ms + self._ttl_ms, "reserved")
        reservation = self._reservation(job_id, job, replayed=False, tenant=tenant)
        if not await self._write(reservation, "held", cost_micros):
            self._finish(reservation, "refunded", 0)
            return None
        return reservation

    @staticmethod
    def _reservation(job_id: str, job: _JobRecord, *, replayed: bool, tenant: str | None) -> Reservation:
        return Reservation(job_id=job_id, reservation_id=job.reservation_id, cost_micros=job.cost, month=job.month,
                           expires_at=datetime.fromtimestamp(job.expires_ms / 1000, UTC),
                           state="settled" if job.state == "settled" else "reserved", replayed=replayed,
                           tenant=tenant)

    async def settle(self, reservation: Reservation, actual_cost_micros: int | None = None) -> bool:
        actual = reservation.cost_micros if actual_cost_micros is None else actual_cost_micros
        if actual < 0:
            raise ValueError("actual_cost_micros must be >= 0")
        closed = self._finish(reservation, "settled", actual)
        if closed:
            await self._write(reservation, "settled", actual)
        return closed

    async def refund(self, reservation: Reservation) -> bool:
        closed = self._finish(reservation, "refunded", 0)
        if closed:
            await self._write(reservation, "refunded", 0)
        return closed

    def _finish(self, reservation: Reservation, mode: str, actual: int) -> bool:
        # Like the close script, no sweep: a hold swept already is "expired", and a settle still counts.
        totals = self._months.setdefault(reservation.month, _Month())
        rid = reservation.reservation_id
        if rid in totals.closed:
            return False
        totals.closed.add(rid)
        totals.release(rid)
        if mode == "settled":
            totals.spent += actual
            if rid in totals.owners:
                totals.tenant(totals.owners[rid])[0] += actual
        job = self._jobs.get(reservation.job_id)
        if job is not None and job.reservation_id == rid:  # a superseded reservation leaves the record alone
            job.state = mode
        return True

    async def snapshot(self, month: str | None = None) -> BudgetSnapshot:
        month = month or self.current_month()
        if not await self._rebuilt(month):
            totals = self._swept(month, self._now_ms())
            return BudgetSnapshot(month=month, cap_micros=self.cap_micros, spent_micros=totals.spent,
                                  reserved_micros=max(totals.reserved, self.cap_micros - totals.spent))
        totals = self._swept(month, self._now_ms())
        return BudgetSnapshot(month=month, cap_micros=self.cap_micros, spent_micros=totals.spent,
                              reserved_micros=totals.reserved)

    async def snapshot_with_tenant(self, tenant: str) -> tuple[BudgetSnapshot, TenantSpend]:
        snap = await self.snapshot()
        return snap, await self.tenant_snapshot(tenant, snap.month)

    async def tenant_snapshot(self, tenant: str, month: str | None = None) -> TenantSpend:
        month = month or self.current_month()
        await self.snapshot(month)
        spent, reserved = self._months.setdefault(month, _Month()).tenants.get(tenant, [0, 0])
        return TenantSpend(tenant, spent, reserved, (await self._tenants.budget(tenant)).cap_micros)

    async def tenant_spend(self, month: str | None = None) -> dict[str, TenantSpend]:
        month = month or self.current_month()
        await self.snapshot(month)
        return {tenant: await self.tenant_snapshot(tenant, month)
                for tenant in sorted(self._months.setdefault(month, _Month()).tenants)}


class MemoryTenantBudgets:
    """``TenantBudgets`` from a dict: tenant → its own cap in micro-dollars (None: registered, no cap)."""

    def __init__(self, caps: dict[str, int | None] | None = None) -> None:
        self.caps = dict(caps or {})

    async def budget(self, tenant: str) -> TenantBudget:
        if tenant not in self.caps:
            return TenantBudget(registered=False)
        return TenantBudget(registered=True, cap_micros=self.caps[tenant])


class MemorySpendJournal:
    """``SpendJournal`` in a dict; ``broken = True`` makes it fail as an unreachable bucket would."""

    def __init__(self) -> None:
        self.entries: dict[str, SpendEntry] = {}
        self.broken = False

    async def write(self, entry: SpendEntry) -> None:
        if self.broken:
            raise SpendJournalUnavailable("the fake journal is broken")
        self.entries[entry.reservation_id] = entry

    async def month(self, month: str) -> list[SpendEntry]:
        if self.broken:
            raise SpendJournalUnavailable("the fake journal is broken")
        return [entry for entry in self.entries.values() if entry.month == month]


# ------------------------------------------------------------------------------------ provider calls


class MemoryProviderCalls:
    """``ProviderCalls`` in dicts, with ``RedisProviderCalls``' rules; claims expire on the injected clock."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: dict[tuple[str, str], PaidCall] = {}
        self._claims: dict[tuple[str, str, int], float] = {}

    async def current(self, job_id: str, provider: str) -> PaidCall:
        return self._calls.get((job_id, provider), PaidCall(1))

    async def claim(self, job_id: str, provider: str, seq: int, ttl_s: float) -> bool:
        now = self._clock()
        if self._claims.get((job_id, provider, seq), -math.inf) > now:
            return False
        self._claims[(job_id, provider, seq)] = now + ttl_s
        return True

    async def record(self, job_id: str, provider: str, seq: int, call_id: str) -> bool:
        if (await self.current(job_id, provider)).seq != seq:
            return False
        self._calls[(job_id, provider)] = PaidCall(seq, call_id)
        return True

    async def close(self, job_id: str, provider: str, seq: int) -> None:
        if (await self.current(job_id, provider)).seq == seq:
            self._calls[(job_id, provider)] = PaidCall(seq + 1)


# ------------------------------------------------------------------------------------ breaker


class MemoryBreaker:
    """``Breaker`` with ``RedisCircuitBreaker``'s rule: a failure while open or half open re-opens it."""

    def __init__(self, provider: str, *, threshold: int = 5, cooldown_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.provider = provider
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._down_until = 0.0

    async def allows(self) -> bool:
        return not self._down_until > self._clock()

    async def success(self) -> None:
        self._failures, self._down_until = 0, 0.0

    async def failure(self) -> float | None:
        self._failures += 1
        if self._failures >= self._threshold or self._down_until > 0:
            self._down_until = self._clock() + self._cooldown_s
        return self._down_until if self._down_until > self._clock() else None

    async def state(self) -> BreakerState:
        now = self._clock()
        state = "open" if self._down_until > now else "half_open" if self._down_until > 0 else "closed"
        until = _utc(self._down_until) if self._down_until else None
        return BreakerState(self.provider, state, self._failures, until)


# ------------------------------------------------------------------------------------ blobs, cache, routes


@dataclasses.dataclass(frozen=True)
class StoredBlob:
    data: bytes
    content_type: str
    cache_control: str


class MemoryBlobStore:
    """``BlobStore`` in a dict; ``objects`` shows what was put, with its headers."""

    def __init__(self, public_base_url: str = "https://cdn.test/forgeline") -> None:
        self._base = public_base_url.rstrip("/")
        self.objects: dict[str, StoredBlob] = {}
        self.puts = 0

    def public_url(self, key: str) -> str:
        return f"{self._base}/{key}"

    async def put(self, key: str, data: bytes, *, content_type: str,
                  cache_control: str = IMMUTABLE_CACHE_CONTROL, sha256: str | None = None) -> str:
        if sha256 is not None and sha256 != hashlib.sha256(data).hexdigest():  # as S3 checks a signed payload hash
            raise BlobStoreError(f"upload of {key!r} failed: HTTP 400 XAmzContentSHA256Mismatch")
        self.objects[key] = StoredBlob(bytes(data), content_type, cache_control)
        self.puts += 1
        return self.public_url(key)

    async def exists(self, key: str) -> bool:
        return key in self.objects

    async def get(self, key: str) -> bytes:
        return self.objects[key].data  # KeyError when missing, like S3BlobStore


class MemoryResultCache:
    """``ResultCache`` shaped like ``RedisResultCache``: an optional local LRU in front of a shared dict."""

    def __init__(self, *, local: LruTtlCache[GenerationCompleted] | None = None) -> None:
        self._local = local if local is not None else LruTtlCache(0, 0)
        self._shared: dict[str, bytes] = {}
        self._stats: dict[str, int] = {}

    async def get(self, cache_key: str) -> GenerationCompleted | None:
        found = self._local.get(cache_key)
        if found is not None:
            self._count("hit_local")
            return found
        raw = self._shared.get(cache_key)
        if raw is None:
            self._count("miss")
            return None
        found = GenerationCompleted.model_validate_json(raw)  # a copy, as Redis would give
        self._local.set(cache_key, found)
        self._count("hit_redis")
        return found

    def peek_local(self, cache_key: str) -> GenerationCompleted | None:
        return self._local.get(cache_key)

    async def put(self, cache_key: str, completed: GenerationCompleted) -> None:
        self._shared[cache_key] = completed.to_json_bytes()
        self._local.set(cache_key, completed)

    def _count(self, result: str) -> None:
        self._stats[result] = self._stats.get(result, 0) + 1

    async def stats(self) -> dict[str, int]:
        return dict(self._stats)


class MemoryRouteStats:
    """``RouteStats`` in a dict."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    async def count(self, path: str) -> None:
        self._counts[path] = self._counts.get(path, 0) + 1

    async def counts(self) -> dict[str, int]:
        return dict(self._counts)


class MemoryRecentJobs:
    """``RecentJobs`` in a list, newest first."""

    def __init__(self, capacity: int = 48) -> None:
        self._ids: list[str] = []
        self._capacity = capacity

    async def add(self, job_id: str) -> None:
        self._ids = [job_id, *(known for known in self._ids if known != job_id)][: self._capacity]

    async def latest(self, limit: int) -> list[str]:
        return self._ids[: max(0, limit)]


# ------------------------------------------------------------------------------------ image providers

#: The smallest bytes ``images.sniff_content_type`` takes for a PNG.
FAKE_PNG = b"\x89PNG\r\n\x1a\n" + b"fake image"


@dataclasses.dataclass
class FakeImageProvider:
    """An adapter for ``Failover``'s candidates that answers from what the test set up; ``calls`` logs the tokens.

    Per call, in order: an error for the call's token (``rejects``, every time), the next error of
    ``script`` (once each), ``always``; otherwise an image.
    """

    name: str
    rejects: dict[str, Exception] = dataclasses.field(default_factory=dict)
    script: list[Exception] = dataclasses.field(default_factory=list)
    always: Exception | None = None
    calls: list[str | None] = dataclasses.field(default_factory=list)
    during_call: Callable[[], Any] | None = None  # awaited inside the call: what the world looks like then

    async def generate(self, spec: ImageSpec, token: str | None) -> GeneratedImage:
        self.calls.append(token)
        if self.during_call is not None:
            await self.during_call()
        if token is not None and token in self.rejects:
            raise self.rejects[token]
        if self.script:
            raise self.script.pop(0)
        if self.always is not None:
            raise self.always
        return GeneratedImage(data=FAKE_PNG, content_type="image/png", provider=f"{self.name}-protocol",
                              model="fake-model", deterministic=False)


@dataclasses.dataclass
class FakeResumableProvider:
    """A paid provider whose calls can be resumed, like Replicate's predictions: ``log`` shows every
    ``create:<id>``, ``resume:<id>`` and ``cancel:<id>``. While ``hold`` is set a call waits on it
    (the test kills it there); ``generate`` without a call record is a plain, unresumable call."""

    name: str
    hold: asyncio.Event | None = None
    log: list[str] = dataclasses.field(default_factory=list)
    _ids: itertools.count = dataclasses.field(default_factory=lambda: itertools.count(1))

    async def generate(self, spec: ImageSpec, token: str | None) -> GeneratedImage:
        self.log.append(f"create:unrecorded-{next(self._ids)}")
        return self._image()

    async def generate_resumable(self, spec: ImageSpec, token: str | None, call: ResumableCall) -> GeneratedImage:
        call_id = call.call_id
        if call_id is not None:
            self.log.append(f"resume:{call_id}")
        if await call.finished():
            if call_id is not None:
                self.log.append(f"cancel:{call_id}")
            raise JobAlreadyFinished("finished elsewhere", provider=self.name)
        if call_id is None:
            if not await call.calls.claim(call.job_id, call.provider, call.seq, ttl_s=60):
                raise AssertionError("a concurrent create in a unit test")
            call_id = f"p{next(self._ids)}"
            self.log.append(f"create:{call_id}")
            await call.calls.record(call.job_id, call.provider, call.seq, call_id)
        if self.hold is not None:
            await self.hold.wait()
        return self._image()

    def _image(self) -> GeneratedImage:
        return GeneratedImage(data=FAKE_PNG, content_type="image/png", provider=f"{self.name}-protocol",
                              model="fake-model", deterministic=False)
