"""Job status in Redis, shared by every service, and the guard that keeps one terminal result per job.

Status only moves forward: ``queued → routed → generating → stored → completed | failed``. An
update that arrives late (a replayed record, a slow replica) cannot move a job backwards, and
the first terminal status wins. Each accepted change is also appended to a small per-job Redis
stream, so ``GET /v1/generations/{id}/events`` can replay every change from the start and then
block for new ones, with no window in which a change could be missed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Sequence
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis

from services.common.consumer import Outcome, Output
from services.common.contracts import (
    ComparisonCompleted,
    ComparisonFailed,
    ContractError,
    Event,
    GenerationCompleted,
    GenerationFailed,
    utcnow,
)
from services.common.errors import Retryable
from services.common.ports import JobStore, RecentJobs, TerminalGuard
from services.common.ratelimit import in_flight_key
from services.common.redis import KeySpace, hashtag

JobStatus = Literal["queued", "routed", "generating", "stored", "completed", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "canceled"})
#: Stage order; the update rule compares these (``tests/fakes.py``'s store uses the same table).
RANK: dict[str, int] = {"queued": 0, "routed": 1, "generating": 2, "stored": 3, "completed": 4, "failed": 4,
                        "canceled": 4}

# KEYS: job hash, job event stream.  ARGV: status, rank, ttl seconds, fields (JSON object), now (ISO).
# Returns 1 when the change was applied, 0 when it was stale: a lower rank only fills in missing fields,
# and a terminal job takes no more changes.
_UPDATE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'rank') or '-1')
local rank = tonumber(ARGV[2])
if current >= 4 then return 0 end
local fields = cjson.decode(ARGV[4])
if rank < current then
  -- A late update (a replica slower than the next stage): keep its facts where none are known yet.
  for name, value in pairs(fields) do redis.call('HSETNX', KEYS[1], name, value) end
  return 0
end
for name, value in pairs(fields) do redis.call('HSET', KEYS[1], name, value) end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'rank', ARGV[2], 'updated_at', ARGV[5])
if redis.call('HEXISTS', KEYS[1], 'created_at') == 0 then redis.call('HSET', KEYS[1], 'created_at', ARGV[5]) end
if rank > current then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '64', '*', 'snapshot', cjson.encode(redis.call('HGETALL', KEYS[1])))
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


class JobView(BaseModel):
    """What ``GET /v1/generations/{job_id}`` shows."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    kind: Literal["generation", "comparison"] = "generation"
    tenant: str | None = None
    status: JobStatus
    created_at: datetime | None = None
    updated_at: datetime | None = None
    route: str | None = None
    route_reason: str | None = None
    primary_depth: int | None = None
    provider: str | None = None
    url: str | None = None
    cached: bool = False
    deterministic: bool | None = None
    placeholder: bool | None = None
    error: dict[str, Any] | None = None
    timings: dict[str, Any] = {}
    result: dict[str, Any] | None = None
    coalesced_with: str | None = Field(
        None, description="The identical job in flight whose provider call this job waits on (or waited on).")
    queue_position: int | None = Field(
        None, ge=0, description="While routed and waiting: jobs ahead of it on its path that no generator has "
                                "taken yet (an estimate; null once a generator took it, or while it waits on "
                                "coalesced_with).")
    estimated_start_s: float | None = Field(
        None, ge=0, description="While waiting on its path: seconds until a generator should take it, from the "
                                "path's measured service rate (null until a rate is measured).")
    estimated_start_at: datetime | None = Field(None, description="When a generator should take it (UTC).")
    comparison_id: str | None = None  # a generation with a reference image: its comparison
    generation_job_id: str | None = None  # a comparison a generation asked for: that generation
    # Webhook deliveries (ingest's DeliveryView: time, status and latency of every attempt); kept apart
    # from the job hash, since they go on after the job ended.
    deliveries: list[dict[str, Any]] = []

    @classmethod
    def from_hash(cls, job_id: str, raw: dict[str, str]) -> JobView:
        data: dict[str, Any] = {"job_id": job_id}
        for name, value in raw.items():
            if name in _JSON_FIELDS:
                data[name] = json.loads(value)
            elif name != "rank":
                data[name] = value
        return cls.model_validate(data)


_JSON_FIELDS = {"error", "timings", "result", "primary_depth", "cached", "deterministic", "placeholder"}
#: orjson as json.dumps(default=str) was: datetimes and dataclasses through ``str``, non-string keys as text.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS


def _json(value: Any) -> bytes:
    """JSON by orjson: every service writes a job's status several times a job, ~7x faster than json.dumps."""
    return orjson.dumps(value, default=str, option=_ORJSON_OPTIONS)


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """``fields`` as the job hash stores them (``JobView.from_hash`` reads them back); None is left out."""
    encoded = {}
    for name, value in fields.items():
        if value is None:
            continue
        encoded[name] = _json(value).decode() if name in _JSON_FIELDS else str(value)
    return encoded


def job_key(keys: KeySpace, job_id: str) -> str:
    """The job's status hash, ``job:{<id>}``; its change stream is ``job:{<id>}:events``, in the same slot."""
    return keys.key("job", hashtag(job_id))


class RedisJobStore:
    """Reads and writes job status; safe for any number of replicas at once."""

    def __init__(self, redis: Redis, keys: KeySpace, *, ttl_s: int = 7 * 24 * 3600) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._update = redis.register_script(_UPDATE)

    def _hash(self, job_id: str) -> str:
        return job_key(self._keys, job_id)

    async def mark_forwarded(self, job_id: str) -> None:
        await self._redis.set(self._hash(job_id) + ":forwarded", b"1", ex=self._ttl_s)

    async def forwarded(self, job_id: str) -> bool:
        return bool(await self._redis.exists(self._hash(job_id) + ":forwarded"))

    def _stream(self, job_id: str) -> str:
        return job_key(self._keys, job_id) + ":events"

    async def update(self, job_id: str, status: JobStatus, *, frees_slot: bool = True, **fields: Any) -> bool:
        """Move ``job_id`` to ``status`` with ``fields``; False when the change was stale.

        A terminal status also frees the job's in-flight slot under its tenant's cap (``ratelimit``):
        a command of its own, as the slot set lives in the tenant's hash slot, not the job's, sent
        in the same round trip (freeing the slot does not depend on the update's verdict).
        ``frees_slot=False``: the job never took one (a cache hit).
        """
        keys = [self._hash(job_id), self._stream(job_id)]
        args = [status, RANK[status], self._ttl_s, _json(encode_fields(fields)), utcnow().isoformat()]
        if status not in TERMINAL or not fields.get("tenant") or not frees_slot:
            return bool(await self._update(keys=keys, args=args))
        # Both go out in the same write as the loop turn's other commands (``AutoPipelineRedis``).
        applied, freed = await asyncio.gather(self._update(keys=keys, args=args),
                                              self._redis.zrem(in_flight_key(self._keys, fields["tenant"]), job_id),
                                              return_exceptions=True)
        for outcome in (applied, freed):
            if isinstance(outcome, BaseException):
                raise outcome
        return bool(applied)

    async def get(self, job_id: str) -> JobView | None:
        raw = await self._redis.hgetall(self._hash(job_id))
        if not raw:
            return None
        return JobView.from_hash(job_id, {k.decode(): v.decode() for k, v in raw.items()})

    async def changes(self, job_id: str, after: str = "0", block_ms: int = 2_000) -> list[tuple[str, JobView]]:
        """Status changes after stream id ``after`` (``"0"``: from the start), waiting up to ``block_ms``.

        Keep ``block_ms`` below the Redis client's socket timeout, or the wait itself times out.
        """
        reply = await self._redis.xread({self._stream(job_id): after}, block=block_ms, count=64)
        changes: list[tuple[str, JobView]] = []
        for _stream, entries in reply or ():
            for entry_id, values in entries:
                flat = json.loads(values[b"snapshot"])
                raw = dict(zip(flat[::2], flat[1::2], strict=True))
                changes.append((entry_id.decode(), JobView.from_hash(job_id, raw)))
        return changes


Terminal = GenerationCompleted | GenerationFailed | ComparisonCompleted | ComparisonFailed


class TerminalBeingPublished(Retryable):
    """Another replica is publishing this job's terminal event right now: wait for it (or its lease to end)."""


# Per process, then per task: who holds a job's publishing lease. The same task's retry keeps it.
_PROCESS = uuid.uuid4().hex[:12]


def lease_holder() -> str:
    task = asyncio.current_task()
    return f"{_PROCESS}:{id(task) if task is not None else 0}"


# A claim in one round trip: store the event unless one is stored, then, unless it is published, take the lease.
# KEYS: stored event, its published mark, its publishing lease.  ARGV: event envelope (JSON), ttl s, holder, lease ms.
# Returns {1}: ours is stored, publish it; {2}: published already; {3, stored}: publish the stored one;
# {0}: another copy holds the publishing lease.
_CLAIM = """
local function lease()
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= ARGV[3] then return false end
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
  return true
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  if lease() then return {1} end
  return {0}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {2} end
if not lease() then return {0} end
return {3, redis.call('GET', KEYS[1])}
"""


class RedisTerminalGuard:
    """Lets exactly one terminal event (completed or failed) per job reach the results topics.

    The first handler to ``claim`` a job stores its terminal event; a replay (a crash before the
    offset commit, a duplicate from a retried producer) gets back that stored event if it was not
    yet published — republishing identical bytes — or nothing once it was. While one copy holds
    the job's publishing lease (``lease_s``, taken by ``claim``), a second copy processed at the
    same time gets :class:`TerminalBeingPublished` and waits: it publishes nothing unless the first
    holder died before marking the event published, and then the same bytes.
    """

    _MODELS: dict[str, type[Event]] = {model.__name__: model for model in (
        GenerationCompleted, GenerationFailed, ComparisonCompleted, ComparisonFailed)}

    def __init__(self, redis: Redis, keys: KeySpace, *, ttl_s: int = 7 * 24 * 3600, lease_s: float = 30.0) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._lease_ms = max(1, int(lease_s * 1000))
        self._claim = redis.register_script(_CLAIM)

    async def claim(self, event: Terminal) -> Terminal | None:
        """The terminal event to publish for ``event.job_id``, or None if one was published already.

        Raises ``TerminalBeingPublished`` while another copy holds the publishing lease. One Lua
        call (``_CLAIM``): storage claims every job it completes, so this is on every job's path.
        """
        key = self._key(event.job_id)
        stored = b'{"type":%s,"event":%s}' % (_json(type(event).__name__), event.to_json_bytes())
        verdict, *found = await self._claim(keys=[key, key + ":published", key + ":publishing"],
                                            args=[stored, self._ttl_s, lease_holder(), self._lease_ms])
        if verdict == 0:
            raise TerminalBeingPublished(f"job {event.job_id}: another replica is publishing its terminal event")
        if verdict == 1:
            return event
        if verdict == 2:
            return None
        envelope = json.loads(found[0])
        model = self._MODELS.get(envelope["type"])
        if model is None:
            raise ContractError("RedisTerminalGuard", {"type": f"unknown terminal event {envelope['type']!r}"})
        return model.model_validate(envelope["event"])  # type: ignore[return-value]

    def _key(self, job_id: str) -> str:
        return self._keys.key("terminal", hashtag(job_id))

    async def mark_published(self, job_id: str) -> None:
        await self._redis.set(self._key(job_id) + ":published", b"1", ex=self._ttl_s)

    async def finished(self, job_id: str) -> bool:
        """True once a terminal event was claimed for the job (published or about to be)."""
        return bool(await self._redis.exists(self._key(job_id)))


async def terminal_outcome(event: Terminal, *, topic: str, guard: TerminalGuard, jobs: JobStore,
                           recent: RecentJobs | None = None, alongside: Sequence[Awaitable[object]] = ()) -> Outcome:
    """The ``Outcome`` that publishes ``event`` as the job's one terminal result.

    After the broker acknowledges it, the job is marked published and its status set, so a
    poller never sees "completed" before a subscriber could; a completed generation then joins
    ``recent`` (the dashboard's gallery). ``alongside``: the caller's writes that must land before
    the event is published, sent in the same wait as the guard's claim.
    """
    # The claim runs in this task (its publishing lease is this task's); the writes beside it, in the same loop turn.
    writes = [asyncio.ensure_future(write) for write in alongside]
    try:
        to_publish = await guard.claim(event)
    finally:
        for failed in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(failed, BaseException):
                raise failed
    if to_publish is None:
        return Outcome()

    async def acked() -> None:
        # Both at once: either order is safe (a replay before the mark republishes the same bytes).
        status, fields = _terminal_status(to_publish)
        await asyncio.gather(guard.mark_published(to_publish.job_id), jobs.update(to_publish.job_id, status, **fields))
        if recent is not None and isinstance(to_publish, GenerationCompleted):
            await recent.add(to_publish.job_id)

    return Outcome([Output(topic, to_publish)], on_acked=acked)


def _terminal_status(event: Terminal) -> tuple[JobStatus, dict[str, Any]]:
    """The status and fields a terminal event leaves in the job's record."""
    if isinstance(event, GenerationCompleted):
        return "completed", {
            "tenant": event.tenant, "url": event.url, "provider": event.provider, "cached": event.cached,
            "deterministic": event.deterministic, "placeholder": event.placeholder,
            "timings": event.timings.model_dump(mode="json"), "result": event.model_dump(mode="json"),
        }
    if isinstance(event, ComparisonCompleted):
        return "completed", {"tenant": event.tenant, "cached": event.cached, "provider": event.result.provider,
                             "result": event.model_dump(mode="json")}
    fields: dict[str, Any] = {"tenant": event.tenant, "error": event.error.model_dump(mode="json")}
    if isinstance(event, GenerationFailed):
        fields["timings"] = event.timings.model_dump(mode="json")
        if event.canceled:
            return "canceled", fields
    return "failed", fields


def merge_outcomes(*outcomes: Outcome) -> Outcome:
    """One outcome producing every output of ``outcomes``; each ``on_acked`` runs once all are acknowledged."""
    callbacks = [o.on_acked for o in outcomes if o.on_acked is not None]

    async def acked() -> None:
        for callback in callbacks:
            await callback()

    return Outcome([output for o in outcomes for output in o.outputs], on_acked=acked if callbacks else None)
