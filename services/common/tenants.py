"""Tenants, their API keys and limits, kept in Redis and shared by every ingest and router replica.

A key is shown once, when it is made (``fl_<key id>_<secret>``); Redis holds only its SHA-256.
A key has 256 random bits, so a fast hash is as good as a slow one here: nobody can guess
their way to a preimage, and the lookup stays one ``GET``. Several keys per tenant; each key may
carry limits stricter than its tenant's. Revoking deletes the hash: the next request with that key
is a 401 (after at most ``lookup_ttl_s`` on replicas that saw it just before).

Layout (all under the deployment's key prefix)::

    apikey:<sha256 of the key>     JSON KeyRecord: tenant, key id, the key's own limits
    apikey-id:<key id>             the hash above, so ``forgeline tenants revoke <key id>`` can find it
    tenant:<name>                  JSON TenantLimits (rate, burst, jobs in flight, monthly budget)
    tenants                        set of tenant names
    tenant-keys:<name>             set of the tenant's key ids
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from services.common.budget import TenantBudget, usd
from services.common.cache import LruTtlCache
from services.common.contracts import Tenant
from services.common.redis import KeySpace

KEY_PREFIX = "fl_"


class _Unregistered:
    """The cached answer "no such tenant" (the cache keeps no None)."""


UNREGISTERED = _Unregistered()


def _to_micro_dollars(amount: float) -> Decimal:
    """A budget given as a float (``--budget 2.5``) in whole micro-dollars, as the ledger counts."""
    return Decimal(str(amount)).quantize(Decimal("0.000001"), rounding=ROUND_DOWN)


class Limits(BaseModel):
    """A token bucket: a key's own, or its tenant's; None: no bucket at this level."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    rate_per_s: float | None = Field(None, gt=0, description="Requests per second the bucket refills.")
    burst: int | None = Field(None, ge=1, description="Bucket size: requests accepted at once after a pause.")


class TenantLimits(Limits):
    """The tenant's bucket, shared by all its keys, plus what only a tenant has."""

    max_in_flight: int | None = Field(None, ge=1, description="The tenant's jobs queued or running at once.")
    monthly_budget_usd: float | None = Field(None, ge=0, description="Paid spend per calendar month (UTC).")


class KeyRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    tenant: Tenant
    key_id: str
    created_at: datetime
    limits: Limits = Limits()


class Caller(BaseModel):
    """Who a request comes from: the tenant, the key (None for the deprecated env keys), both limits."""

    model_config = ConfigDict(frozen=True)

    tenant: str
    key_id: str | None
    tenant_limits: TenantLimits
    key_limits: Limits = Limits()


def hash_key(presented: str) -> str:
    return hashlib.sha256(presented.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """``(key id, key)``: the id names it in lists and revocations, the key is shown once."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


class TenantStore:
    """Reads and writes tenants and keys. ``caller`` is the per-request lookup, cached in-process briefly."""

    def __init__(self, redis: Redis, keys: KeySpace, *, lookup_ttl_s: float = 5.0) -> None:
        self._redis = redis
        self._keys = keys
        self._callers: LruTtlCache[Caller | None] = LruTtlCache(4096, lookup_ttl_s)
        self._limits: LruTtlCache[TenantLimits | _Unregistered] = LruTtlCache(4096, lookup_ttl_s)

    def _k(self, *parts: str) -> str:
        return self._keys.key(*parts)

    async def caller(self, presented: str) -> Caller | None:
        """The caller owning ``presented``, or None for an unknown or revoked key."""
        digest = hash_key(presented)
        cached = self._callers.get(digest)
        if cached is not None:
            return cached
        raw = await self._redis.get(self._k("apikey", digest))
        if raw is None:
            return None
        record = KeyRecord.model_validate_json(raw)
        found = Caller(tenant=record.tenant, key_id=record.key_id, tenant_limits=await self.limits(record.tenant),
                       key_limits=record.limits)
        self._callers.set(digest, found)
        return found

    async def limits(self, tenant: str) -> TenantLimits:
        """The tenant's limits (no limits for a tenant never configured)."""
        return await self.registered_limits(tenant) or TenantLimits()

    async def registered_limits(self, tenant: str) -> TenantLimits | None:
        """The tenant's limits; None for a tenant never configured (a name only a Kafka producer used)."""
        cached = self._limits.get(tenant)
        if cached is not None:
            return None if cached is UNREGISTERED else cached
        raw = await self._redis.get(self._k("tenant", tenant))
        found = TenantLimits.model_validate_json(raw) if raw is not None else None
        self._limits.set(tenant, UNREGISTERED if found is None else found)
        return found

    async def budget(self, tenant: str) -> TenantBudget:
        """What the budget ledger needs of ``tenant``: registered, and its own monthly cap (``--budget``)."""
        limits = await self.registered_limits(tenant)
        if limits is None:
            return TenantBudget(registered=False)
        cap = limits.monthly_budget_usd
        return TenantBudget(registered=True, cap_micros=None if cap is None else usd(_to_micro_dollars(cap)))

    async def set_limits(self, tenant: str, limits: TenantLimits) -> None:
        await self._redis.set(self._k("tenant", tenant), limits.model_dump_json())
        await self._redis.sadd(self._k("tenants"), tenant)

    async def create_key(self, tenant: str, limits: Limits = Limits()) -> tuple[KeyRecord, str]:
        """A new key for ``tenant`` (made if new); returns the record and the key, which is not kept."""
        key_id, key = new_key()
        record = KeyRecord(tenant=tenant, key_id=key_id, created_at=datetime.now(UTC), limits=limits)
        digest = hash_key(key)
        await self._redis.set(self._k("apikey", digest), record.model_dump_json())
        await self._redis.set(self._k("apikey-id", key_id), digest)
        await self._redis.sadd(self._k("tenant-keys", tenant), key_id)
        await self._redis.sadd(self._k("tenants"), tenant)
        return record, key

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Delete the key with ``key_id``; None when there is none."""
        digest = await self._redis.get(self._k("apikey-id", key_id))
        if digest is None:
            return None
        raw = await self._redis.get(self._k("apikey", digest.decode()))
        await self._redis.delete(self._k("apikey", digest.decode()), self._k("apikey-id", key_id))
        if raw is None:
            return None
        record = KeyRecord.model_validate_json(raw)
        await self._redis.srem(self._k("tenant-keys", record.tenant), key_id)
        return record

    async def tenants(self) -> dict[str, tuple[TenantLimits, list[KeyRecord]]]:
        """Every tenant with its limits and keys (ids and limits only: the keys themselves are not kept)."""
        found: dict[str, tuple[TenantLimits, list[KeyRecord]]] = {}
        for raw_name in sorted(await self._redis.smembers(self._k("tenants"))):
            name = raw_name.decode()
            records = []
            for key_id in sorted(await self._redis.smembers(self._k("tenant-keys", name))):
                digest = await self._redis.get(self._k("apikey-id", key_id.decode()))
                raw = await self._redis.get(self._k("apikey", digest.decode())) if digest else None
                if raw is not None:
                    records.append(KeyRecord.model_validate_json(raw))
            found[name] = (await self.limits(name), records)
        return found


def limits_json(limits: Limits) -> str:
    """Limits as ``forgeline tenants list`` prints them: only those that are set."""
    return json.dumps(limits.model_dump(exclude_none=True))
