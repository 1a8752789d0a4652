"""Coalescing: identical requests in flight at the same time share one provider call.

The router makes the first job of a normalised request the group's *leader* and routes it; an
identical job that arrives while the leader runs becomes a *follower*: it is parked in Redis
(its request kept whole) and its offset committed at once, so a follower never holds a consumer
slot. When the leader's terminal event appears, the router's fan-out (``services.router.coalesce``)
gives every follower its own terminal event with the leader's image.

The group's key is the result cache's key (``coalescing_key``), so what coalesces is exactly what
the cache would answer, with the cache's scope.

Keys (all of one group share the key's hash tag, so each script runs on one cluster node):

=================================  =============================================================
``coalesce:{<key>}``               hash: ``leader`` (job id), ``request`` (its JSON), ``deadline``
                                   (Redis time, ms): the lease
``coalesce:{<key>}:followers``     hash: follower job id → its ``GenerationRequested`` JSON
``coalesce:{<key>}:closing:<job>`` the followers ``<job>``'s terminal event is completing
``coalesce:led:{<job>}``           the key of the group ``<job>`` led (the fan-out's lookup)
``coalesce:groups``                set of keys whose groups have had followers (the sweeper's visits)
=================================  =============================================================

The lease has a deadline. The generator running the leader renews it; while the leader still
waits in its path's queue (durable in Kafka) the sweeper renews it; a leader whose generator
stopped renewing (killed mid-call) loses it: one follower is promoted and routed, and the old
leader is parked in its place, so its redelivered message costs no second provider call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from services.common.cache import CacheScope
from services.common.contracts import GenerationRequested, GenerationRouted
from services.common.redis import KeySpace, hashtag

#: A job that can lead or follow: the request at the router, the routed job at the generator.
Job = GenerationRequested | GenerationRouted

# Redis's own clock, so every replica's deadline means the same instant.
_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

# KEYS: group, followers.  ARGV: job id, request JSON, lease ms, ttl s.
# {"leader", job} when the job leads (a new group, or its own replay); {"follower", leader} when parked.
_JOIN = _NOW + """
local leader = redis.call('HGET', KEYS[1], 'leader')
if not leader or leader == ARGV[1] then
  redis.call('HSET', KEYS[1], 'leader', ARGV[1], 'request', ARGV[2], 'deadline', now + tonumber(ARGV[3]))
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return {'leader', ARGV[1]}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {'follower', leader}
"""

# KEYS: group.  ARGV: job id, lease ms.  1 when the job still leads and its deadline moved on.
_RENEW = _NOW + """
if redis.call('HGET', KEYS[1], 'leader') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'deadline', now + tonumber(ARGV[2]))
return 1
"""

# KEYS: group, followers.  ARGV: job id, lease ms.  Before its provider call, in one step: 'leads' with
# the lease renewed, 'parked' when the job waits as a follower of another leader, 'alone' otherwise.
_HOLD = _NOW + """
if redis.call('HGET', KEYS[1], 'leader') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'deadline', now + tonumber(ARGV[2]))
  return 'leads'
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 'parked' end
return 'alone'
"""

# KEYS: group, followers, closing.  ARGV: job id, shareable (1: its image serves the followers), ttl s.
# The leader's end dissolves the group; a shareable image from a former leader serves the followers
# too. The followers move to ``closing`` at once, so a later arrival starts a group of its own, and a
# replay of the same terminal event finds them there again.
_CLOSE = """
local leads = redis.call('HGET', KEYS[1], 'leader') == ARGV[1]
if leads then redis.call('DEL', KEYS[1]) end
if (leads or ARGV[2] == '1') and redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('EXISTS', KEYS[3]) == 1 then
    local moved = redis.call('HGETALL', KEYS[2])
    for i = 1, #moved, 2 do redis.call('HSET', KEYS[3], moved[i], moved[i + 1]) end
    redis.call('DEL', KEYS[2])
  else
    redis.call('RENAME', KEYS[2], KEYS[3])
  end
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
return redis.call('HGETALL', KEYS[3])
"""

# KEYS: group, followers.  ARGV: expected leader ('' for none), lease ms, ttl s.
# When the lease passed its deadline (or the group lost its leader): the first follower leads, the old
# leader waits among the followers. Returns the new leader's request JSON; nil when nothing changed,
# or nobody waits (the group is dropped: the old leader goes on alone).
_TAKE_OVER = _NOW + """
local leader = redis.call('HGET', KEYS[1], 'leader') or ''
if leader ~= ARGV[1] then return nil end
if leader ~= '' and tonumber(redis.call('HGET', KEYS[1], 'deadline') or '0') > now then return nil end
local waiting = redis.call('HKEYS', KEYS[2])
if #waiting == 0 then redis.call('DEL', KEYS[1]); return nil end
local promoted = waiting[1]
local request = redis.call('HGET', KEYS[2], promoted)
redis.call('HDEL', KEYS[2], promoted)
if leader ~= '' then redis.call('HSET', KEYS[2], leader, redis.call('HGET', KEYS[1], 'request')) end
redis.call('HSET', KEYS[1], 'leader', promoted, 'request', request, 'deadline', now + tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return request
"""


def coalescing_key(job: Job, scope: CacheScope = CacheScope()) -> str:
    """The group a job joins: its result-cache key, so coalescing has exactly the cache's scope.

    With the default per-tenant scope, two tenants asking for the same image make two calls, as
    they would miss each other's cache.
    """
    return scope.key(job.spec, job.tenant)


def coalesces(job: Job) -> bool:
    """Whether a job may share another's provider call: one with a reference image is compared on its own."""
    return job.reference_image is None


@dataclass(frozen=True)
class Role:
    """What ``join`` made of a job: the group's leader, or a follower of ``leader``."""

    kind: Literal["leader", "follower"]
    leader: str
    key: str = ""  # the group's key

    @property
    def leads(self) -> bool:
        return self.kind == "leader"


@dataclass(frozen=True)
class LeaseState:
    """What the sweeper reads of one group."""

    key: str
    leader: str | None
    expired: bool
    waiting: int


class RedisCoalescer:
    """The groups of identical in-flight jobs, shared by every router and generator replica.

    ``lease_s``: how long a leader's lease lasts without renewal (a generator renews it every
    third of that while the provider call runs). ``ttl_s``: the longest any group is kept.
    """

    def __init__(self, redis: Redis, keys: KeySpace, *, lease_s: float = 30.0, ttl_s: int = 24 * 3600,
                 scope: CacheScope = CacheScope()) -> None:
        self._redis = redis
        self._keys = keys
        self._scope = scope
        self.lease_s = lease_s
        self._lease_ms = max(1, int(lease_s * 1000))
        self._ttl_s = ttl_s
        self._join = redis.register_script(_JOIN)
        self._renew = redis.register_script(_RENEW)
        self._hold = redis.register_script(_HOLD)
        self._close = redis.register_script(_CLOSE)
        self._take_over = redis.register_script(_TAKE_OVER)

    # -- keys

    def key_of(self, job: Job) -> str:
        """The key of the group ``job`` joins, in this deployment's cache scope."""
        return coalescing_key(job, self._scope)

    def _group(self, key: str) -> str:
        return self._keys.key("coalesce", hashtag(key))

    def _followers(self, key: str) -> str:
        return self._group(key) + ":followers"

    def _closing(self, key: str, job_id: str) -> str:
        return self._group(key) + ":closing:" + job_id

    def _led(self, job_id: str) -> str:
        return self._keys.key("coalesce", "led", hashtag(job_id))

    @property
    def _index(self) -> str:
        return self._keys.key("coalesce", "groups")

    # -- the router

    async def join(self, request: GenerationRequested, *, mark: bool = True) -> Role:
        """Lead the request's group, or wait in it behind the job that leads it.

        A leader's fan-out needs ``mark_leader``, written before the job is forwarded. ``mark=False``
        leaves it to the caller, which sends it in the same wait as its own writes (the router, with
        the job's "routed" status): one round trip less before the job moves on.
        """
        key = self.key_of(request)
        kind, leader = await self._join(keys=[self._group(key), self._followers(key)],
                                        args=[request.job_id, request.to_json_bytes(), self._lease_ms, self._ttl_s])
        role = Role(kind.decode(), leader.decode(), key)
        if not role.leads:  # only a group with someone waiting needs the sweeper's visits
            await self._redis.sadd(self._index, key)
        elif mark:
            await self.mark_leader(key, request.job_id)
        return role

    async def mark_leader(self, key: str, job_id: str) -> None:
        """Remember which group ``job_id`` leads, for its terminal event's fan-out."""
        await self._redis.set(self._led(job_id), key, ex=self._ttl_s)

    async def led(self, job_id: str) -> str | None:
        """The key of the group ``job_id`` led (or leads), if it ever led one."""
        key = await self._redis.get(self._led(job_id))
        return key.decode() if key is not None else None

    async def close(self, key: str, job_id: str, *, shareable: bool) -> list[GenerationRequested]:
        """The followers ``job_id``'s terminal event must now end (or re-drive); the same on a replay."""
        flat = await self._close(keys=[self._group(key), self._followers(key), self._closing(key, job_id)],
                                 args=[job_id, "1" if shareable else "0", self._ttl_s])
        return [GenerationRequested.from_json_bytes(flat[i + 1]) for i in range(0, len(flat), 2)]

    async def closed(self, key: str, job_id: str) -> None:
        """The followers of ``close`` have their terminal events (or new routes): forget them."""
        await self._redis.delete(self._closing(key, job_id), self._led(job_id))

    # -- the generator

    async def renew(self, job: Job) -> bool:
        """Keep the lease of a leader being generated; False when it no longer leads."""
        return bool(await self._renew(keys=[self._group(self.key_of(job))], args=[job.job_id, self._lease_ms]))

    async def hold(self, job: Job) -> Literal["leads", "parked", "alone"]:
        """Before ``job``'s provider call: renew its lease if it leads, or say that it waits on another.

        The generator asks this *before* it marks the job ``generating``: the sweeper takes a lease
        over only when it has expired and its leader no longer looks queued, so a lease renewed first
        cannot be taken from a leader that has just started its call.
        """
        key = self.key_of(job)
        answer = await self._hold(keys=[self._group(key), self._followers(key)], args=[job.job_id, self._lease_ms])
        return answer.decode() if isinstance(answer, bytes) else answer

    # -- the sweeper

    async def groups(self) -> list[LeaseState]:
        """Every group that has had followers, with its lease's state."""
        states = []
        for raw in await self._redis.smembers(self._index):
            key = raw.decode()
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hmget(self._group(key), "leader", "deadline")
                pipe.hlen(self._followers(key))
                pipe.time()
                (leader, deadline), waiting, (seconds, micros) = await pipe.execute()
            now_ms = seconds * 1000 + micros // 1000
            states.append(LeaseState(key, leader.decode() if leader else None,
                                     expired=deadline is None or int(deadline) <= now_ms, waiting=waiting))
        return states

    async def forget_if_empty(self, key: str) -> None:
        """Drop ``key`` from the sweeper's index once nobody leads or waits (re-added by a racing join)."""
        await self._redis.srem(self._index, key)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(self._group(key))
            pipe.exists(self._followers(key))
            group, followers = await pipe.execute()
        if group or followers:
            await self._redis.sadd(self._index, key)

    async def extend(self, key: str, leader: str) -> bool:
        """Renew a lease whose leader is alive but not yet generating (it waits in its path's queue)."""
        return bool(await self._renew(keys=[self._group(key)], args=[leader, self._lease_ms]))

    async def take_over(self, key: str, leader: str | None) -> GenerationRequested | None:
        """Promote a follower when ``leader``'s lease has expired; the promoted job's request."""
        raw = await self._take_over(keys=[self._group(key), self._followers(key)],
                                    args=[leader or "", self._lease_ms, self._ttl_s])
        if raw is None:
            return None
        promoted = GenerationRequested.from_json_bytes(raw)
        await self.mark_leader(key, promoted.job_id)
        return promoted
