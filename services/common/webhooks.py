"""Webhook state in Redis, shared by ingest (registers endpoints, shows and replays deliveries) and the
webhooks service (schedules and sends them).

Keys::

    webhooks:{<tenant>}:secret      the tenant's signing secret for jobs' own webhook_url (whsec_…)
    webhooks:{<tenant>}:endpoints   hash endpoint id → Endpoint (JSON, its own whsec_… secret)
    webhooks:{<job>}:deliveries     hash delivery id → Delivery (JSON: target, payload, every attempt)
    webhooks:due                    sorted set "<job>|<delivery id>" by when the next attempt is due

A delivery is written before it is due (``schedule``), so a crash between the two leaves a record
that the replayed terminal event puts on the due set again; a delivered one is never put back. A
dispatcher ``claim``s due deliveries by pushing their due time ``lease_s`` ahead: a dispatcher that
dies mid-attempt loses the claim when the lease runs out, and another one sends the same
delivery again (same ``webhook-id``): at-least-once. No script spans two keys, so it runs on a
Redis Cluster as it does on one Redis.

Secrets are ``SecretStr`` in every model: they never show in ``repr``, logs or errors.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer
from redis.asyncio import Redis

from services.common.contracts import WEBHOOK_EVENTS, WebhookEvent, utcnow
from services.common.redis import KeySpace, hashtag

DeliveryState = Literal["pending", "delivered", "failed", "disabled"]
#: Attempts kept per delivery (the schedule has 8; replays add more).
MAX_ATTEMPTS_KEPT = 32


def new_secret() -> SecretStr:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return SecretStr("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())


def message_id(job_id: str, event_type: str) -> str:
    """The ``webhook-id`` of a job's event: the same on every attempt, replica and replay."""
    return "msg_" + hashlib.sha256(f"{job_id}:{event_type}".encode()).hexdigest()[:32]


class _Stored(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @field_serializer("secret", when_used="json", check_fields=False)
    def _reveal_for_storage(self, secret: SecretStr) -> str:
        return secret.get_secret_value()  # only ever serialised into Redis


class Endpoint(_Stored):
    """A URL a tenant registered for its jobs' events, with the secret that signs them."""

    endpoint_id: str
    url: str
    events: tuple[WebhookEvent, ...] = WEBHOOK_EVENTS
    secret: SecretStr
    created_at: datetime
    disabled_at: datetime | None = None
    disabled_reason: str | None = None


class Attempt(BaseModel):
    """One try at a delivery, as ``GET /v1/generations/{id}`` shows it."""

    model_config = ConfigDict(frozen=True)

    at: datetime
    status: int | None = Field(None, description="The receiver's HTTP status; None when none came back.")
    latency_ms: float
    error: str | None = Field(None, description="Why it did not count as delivered (no URL query strings).")


class Delivery(BaseModel):
    """One event of one job on its way to one URL: the job's own ``webhook_url`` or a registered endpoint."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    delivery_id: str  # "job" for the job's webhook_url, else the endpoint's id
    job_id: str
    tenant: str
    event_type: str  # "generation.completed" | "generation.failed"
    event_at: datetime  # when the terminal event was made
    webhook_id: str
    url: str
    endpoint_id: str | None = None
    payload: str  # the exact body every attempt signs and sends
    state: DeliveryState = "pending"
    attempts: tuple[Attempt, ...] = ()
    next_attempt_at: datetime | None = None


def _due_member(job_id: str, delivery_id: str) -> str:
    return f"{job_id}|{delivery_id}"


# KEYS: due set.  ARGV: now (epoch s), lease until (epoch s), how many.
# Moves up to N due members to the lease time and returns them: one dispatcher per delivery at a time.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member) end
return due
"""


class RedisWebhookStore:
    """Endpoints, signing secrets and deliveries; safe for any number of ingest and webhooks replicas."""

    def __init__(self, redis: Redis, keys: KeySpace, *, ttl_s: int = 7 * 24 * 3600) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._claim = redis.register_script(_CLAIM)

    def _tenant(self, tenant: str, what: str) -> str:
        return self._keys.key("webhooks", hashtag(tenant), what)

    def _deliveries(self, job_id: str) -> str:
        return self._keys.key("webhooks", hashtag(job_id), "deliveries")

    @property
    def _due(self) -> str:
        return self._keys.key("webhooks", "due")

    # -- the tenant's signing secret (for jobs' own webhook_url)

    async def rotate_secret(self, tenant: str) -> SecretStr:
        secret = new_secret()
        await self._redis.set(self._tenant(tenant, "secret"), secret.get_secret_value())
        return secret

    async def secret(self, tenant: str) -> SecretStr | None:
        raw = await self._redis.get(self._tenant(tenant, "secret"))
        return SecretStr(raw.decode()) if raw is not None else None

    # -- registered endpoints

    async def add_endpoint(self, tenant: str, url: str, events: tuple[WebhookEvent, ...]) -> Endpoint:
        endpoint = Endpoint(endpoint_id="ep_" + uuid.uuid4().hex[:20], url=url, events=events, secret=new_secret(),
                            created_at=utcnow())
        await self._redis.hset(self._tenant(tenant, "endpoints"), endpoint.endpoint_id, endpoint.model_dump_json())
        return endpoint

    async def endpoints(self, tenant: str) -> list[Endpoint]:
        raw = await self._redis.hgetall(self._tenant(tenant, "endpoints"))
        found = [Endpoint.model_validate_json(value) for value in raw.values()]
        return sorted(found, key=lambda endpoint: endpoint.created_at)

    async def endpoint(self, tenant: str, endpoint_id: str) -> Endpoint | None:
        raw = await self._redis.hget(self._tenant(tenant, "endpoints"), endpoint_id)
        return Endpoint.model_validate_json(raw) if raw is not None else None

    async def remove_endpoint(self, tenant: str, endpoint_id: str) -> bool:
        return bool(await self._redis.hdel(self._tenant(tenant, "endpoints"), endpoint_id))

    async def disable_endpoint(self, tenant: str, endpoint_id: str, reason: str) -> None:
        """Stop sending to an endpoint (its receiver answered 410 Gone); a deleted one stays deleted."""
        endpoint = await self.endpoint(tenant, endpoint_id)
        if endpoint is None or endpoint.disabled_at is not None:
            return
        disabled = endpoint.model_copy(update={"disabled_at": utcnow(), "disabled_reason": reason})
        await self._redis.hset(self._tenant(tenant, "endpoints"), endpoint_id, disabled.model_dump_json())

    # -- deliveries

    async def schedule(self, delivery: Delivery) -> bool:
        """Record ``delivery`` and make it due now; a replay of the same one changes nothing it did.

        True when the delivery was new. One that exists and is still pending is made due again only
        if it is not on the due set (a crash between the two writes); one that ended stays ended.
        """
        key = self._deliveries(delivery.job_id)
        created = bool(await self._redis.hsetnx(key, delivery.delivery_id, delivery.model_dump_json()))
        if created:
            await self._redis.expire(key, self._ttl_s)
        current = delivery if created else await self.delivery(delivery.job_id, delivery.delivery_id)
        if current is not None and current.state == "pending":
            await self._redis.zadd(self._due, {_due_member(delivery.job_id, delivery.delivery_id): time.time()},
                                   nx=True)
        return created

    async def delivery(self, job_id: str, delivery_id: str) -> Delivery | None:
        raw = await self._redis.hget(self._deliveries(job_id), delivery_id)
        return Delivery.model_validate_json(raw) if raw is not None else None

    async def deliveries(self, job_id: str) -> list[Delivery]:
        raw = await self._redis.hgetall(self._deliveries(job_id))
        return sorted((Delivery.model_validate_json(value) for value in raw.values()),
                      key=lambda delivery: delivery.delivery_id != "job")

    async def claim(self, *, limit: int, lease_s: float) -> list[tuple[str, str]]:
        """Up to ``limit`` due deliveries as (job id, delivery id), each held for ``lease_s``."""
        now = time.time()
        members = await self._claim(keys=[self._due], args=[now, now + lease_s, limit])
        claimed = []
        for member in members:
            job_id, _, delivery_id = member.decode().partition("|")
            claimed.append((job_id, delivery_id))
        return claimed

    async def record(self, delivery: Delivery, attempt: Attempt | None, *, state: DeliveryState,
                     next_at: float | None = None) -> Delivery:
        """Store an attempt's result; ``next_at`` (epoch seconds) makes it due again then, else it leaves the set."""
        attempts = (*delivery.attempts, attempt)[-MAX_ATTEMPTS_KEPT:] if attempt is not None else delivery.attempts
        updated = delivery.model_copy(update={
            "state": state, "attempts": attempts,
            "next_attempt_at": datetime.fromtimestamp(next_at, tz=utcnow().tzinfo) if next_at is not None else None,
        })
        await self._redis.hset(self._deliveries(delivery.job_id), delivery.delivery_id, updated.model_dump_json())
        member = _due_member(delivery.job_id, delivery.delivery_id)
        if next_at is not None:
            await self._redis.zadd(self._due, {member: next_at})
        else:
            await self._redis.zrem(self._due, member)
        return updated

    async def forget_due(self, job_id: str, delivery_id: str) -> None:
        """Take a delivery off the due set (its record expired, or it is no longer pending)."""
        await self._redis.zrem(self._due, _due_member(job_id, delivery_id))

    async def replay(self, job_id: str, delivery_id: str) -> Delivery | None:
        """Send a delivery once more, now, whatever its state (the same ``webhook-id`` and body)."""
        delivery = await self.delivery(job_id, delivery_id)
        if delivery is None:
            return None
        return await self.record(delivery, None, state="pending", next_at=time.time())
