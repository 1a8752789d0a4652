"""A pool of provider API keys that every replica shares through Redis.

Generators and the comparer call image providers with API keys. A key that answers 429 must
rest until its ``Retry-After``; a key that answers 401/403 or runs out of quota must stop being
used until an operator looks at it. ``RedisKeyPool`` keeps that state in Redis and nowhere else:

* ``pick()`` is one Lua script: it bumps a shared round-robin cursor, then walks the keys from
  there, skipping disabled keys and keys whose cooldown deadline is still ahead of ``now``. A
  cooldown written by one replica is therefore seen by every replica on its very next pick
  (LiteLLM #40025: cooldowns took seconds to reach other replicas, because each kept its own
  copy). ``now`` comes from the caller's clock, not Redis ``TIME``, so tests can drive it.
* ``cooldown()`` is a compare-and-set script: a deadline only ever moves later, so a short
  second 429 cannot cut a long first one short (LiteLLM #40130: the longest deadline wins).
* When no key is usable, ``NoKeyAvailable.retry_after_s`` says when the first cooling key comes
  back, so the caller can answer with ``Retry-After`` or reschedule instead of spinning
  (LiteLLM #27823, #3646); it is None when every key is disabled, which needs an operator.

Redis layout (under the service's ``KeySpace`` prefix), per provider, all in the hash slot
``{<p>}`` so the scripts and transactions run on Redis Cluster: ``keypool:{<p>}:cursor`` (INCR
counter), ``keypool:{<p>}:cooldown`` (hash key id → deadline, epoch seconds),
``keypool:{<p>}:disabled`` (set of key ids) and ``keypool:{<p>}:key:<id>`` (hash of counters and
reasons). Secrets never reach Redis, logs, metrics or exception text: keys are
known by ``key_id``, ``"<provider>:<sha256[:8]>"``, and shown to humans as ``masked``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from prometheus_client import Counter, Gauge
from pydantic import BaseModel, ConfigDict, SecretStr
from redis.asyncio import Redis

from services.common.errors import Retryable
from services.common.redis import KeySpace, hashtag

log = logging.getLogger(__name__)

#: Cooldown after a 429 that carried no usable ``Retry-After``.
DEFAULT_COOLDOWN_S = 60.0
#: ``Retry-After: 0`` would have the next pick hit the same limit at once.
MIN_COOLDOWN_S = 1.0
#: A longer wait is a quota, not a rate limit: ``disable`` is the tool for that.
MAX_COOLDOWN_S = 24 * 3600.0

KeyStatus = Literal["healthy", "cooling_down", "disabled"]
_STATES: tuple[KeyStatus, ...] = ("healthy", "cooling_down", "disabled")

KEY_STATES = Gauge("forgeline_keypool_keys", "API keys by provider and state (as of the last states() call).",
                   ["provider", "state"])
COOLDOWNS = Counter("forgeline_keypool_cooldowns_total",
                    "Cooldown requests; outcome=kept when a later deadline was already set.", ["provider", "outcome"])
DISABLES = Counter("forgeline_keypool_disables_total", "Keys newly disabled (auth failure or quota).", ["provider"])
EXHAUSTED = Counter("forgeline_keypool_exhausted_total", "Picks that found no usable key, by why.",
                    ["provider", "why"])


# ------------------------------------------------------------------------------------ keys


class ApiKey:
    """One provider API key. Its secret shows only through ``get_secret_value()``."""

    __slots__ = ("_secret", "key_id", "masked", "provider")

    def __init__(self, provider: str, secret: str | SecretStr) -> None:
        raw = (secret.get_secret_value() if isinstance(secret, SecretStr) else secret).strip()
        if not provider:
            raise ValueError("an API key needs a provider name")
        if not raw or any(ch.isspace() for ch in raw):
            # Never echo the value: it is a secret, however malformed.
            raise ValueError(f"a {provider} API key is empty or contains whitespace")
        self._secret = SecretStr(raw)
        self.provider = provider
        # A fingerprint, not a prefix: stable across restarts and replicas, and says nothing of the secret.
        self.key_id = f"{provider}:{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
        self.masked = _mask(raw)

    def get_secret_value(self) -> str:
        """The secret, for an ``Authorization`` header and nothing else."""
        return self._secret.get_secret_value()

    def __repr__(self) -> str:
        return f"ApiKey({self.key_id!r}, masked={self.masked!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other.key_id == self.key_id

    def __hash__(self) -> int:
        return hash(self.key_id)


def _mask(raw: str) -> str:
    # Real keys (hf_…, r8_…, sk-…) are 35+ chars: 7 shown chars tell them apart and reveal little.
    # A short key would be half given away by the same rule, so it shows less.
    if len(raw) >= 20:
        return f"{raw[:3]}…{raw[-4:]}"
    if len(raw) >= 10:
        return f"…{raw[-2:]}"
    return "…"


def _unique(provider: str, secrets: Iterable[str]) -> list[ApiKey]:
    # A key listed twice would get twice the traffic while sharing one rate limit.
    keys: dict[str, ApiKey] = {}
    for secret in secrets:
        key = ApiKey(provider, secret)
        keys.setdefault(key.key_id, key)
    return list(keys.values())


def keys_from_env(value: str | SecretStr | None, provider: str) -> list[ApiKey]:
    """Keys from an environment value: comma- or newline-separated, blanks ignored."""
    if value is None:
        return []
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    return _unique(provider, (part.strip() for part in re.split(r"[,\n]", raw) if part.strip()))


def keys_from_file(path: str | Path, provider: str) -> list[ApiKey]:
    """Keys from a secret file (e.g. a mounted Kubernetes secret): one per line, ``#`` starts a comment line."""
    lines = (line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return _unique(provider, (line for line in lines if line and not line.startswith("#")))


# ------------------------------------------------------------------------------------ pool


class NoKeyAvailable(Retryable):
    """No key of ``provider`` may be used now; ``retry_after_s`` is None when waiting will not help
    (until an operator re-enables a key, or another provider takes the job: hence retryable)."""

    def __init__(self, provider: str, retry_after_s: float | None, message: str | None = None) -> None:
        self.provider = provider
        self.retry_after_s = retry_after_s
        if message is None:
            message = (f"every {provider} key is disabled; re-enable with `forgeline keys enable {provider} <key-id>`"
                       if retry_after_s is None else
                       f"every {provider} key is cooling down; the first comes back in {retry_after_s:.1f}s")
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[type[NoKeyAvailable], tuple[str, float | None, str]]:
        return (type(self), (self.provider, self.retry_after_s, self.message))


class KeyState(BaseModel):
    """What ``/v1/status`` and the metrics show of one key. Never the secret."""

    model_config = ConfigDict(frozen=True)

    provider: str
    key_id: str
    masked: str
    state: KeyStatus
    cooldown_until: datetime | None = None
    cooldown_reason: str | None = None
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    successes: int = 0
    failures: int = 0


# KEYS: cursor, cooldown hash, disabled set.  ARGV: now, key id 1..n.
# Returns {'ok', i} (0-based index of the picked key), {'cooling', earliest deadline} or {'disabled', ''}.
# After skipping, the cursor moves past the picked key, so the keys still healthy share the load evenly
# rather than the one after a cooling key taking its turns too.
_PICK = """
local n = #ARGV - 1
local now = tonumber(ARGV[1])
local start = redis.call('INCR', KEYS[1]) - 1
local earliest, earliest_raw = nil, ''
for step = 0, n - 1 do
  local at = (start + step) % n + 2
  local id = ARGV[at]
  if redis.call('SISMEMBER', KEYS[3], id) == 0 then
    local raw = redis.call('HGET', KEYS[2], id)
    local deadline = (raw and tonumber(raw)) or 0
    if deadline <= now then
      if step > 0 then redis.call('INCRBY', KEYS[1], step) end
      return {'ok', at - 2}
    end
    if earliest == nil or deadline < earliest then earliest, earliest_raw = deadline, raw end
  end
end
if earliest == nil then return {'disabled', ''} end
return {'cooling', earliest_raw}
"""

# KEYS: cooldown hash, key hash.  ARGV: key id, deadline, reason, now.
# Only a later deadline replaces the current one. Returns {1 if set else 0, the deadline in force}.
_COOLDOWN = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
if tonumber(ARGV[2]) > current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], 'cooldown_reason', ARGV[3], 'cooled_at', ARGV[4])
  return {1, ARGV[2]}
end
return {0, redis.call('HGET', KEYS[1], ARGV[1])}
"""


def resolve_key(provider: str, keys: Sequence[ApiKey], key: ApiKey | str) -> ApiKey:
    """The pool's key for an ``ApiKey``, a key id or a masked form (the operator's CLI gets either)."""
    by_id = {k.key_id: k for k in keys}
    if isinstance(key, ApiKey):
        found = by_id.get(key.key_id)
    else:
        found = by_id.get(key)
        if found is None:
            matches = [k for k in keys if k.masked == key]
            found = matches[0] if len(matches) == 1 else None
    if found is None:
        known = ", ".join(k.key_id for k in keys) or "none"
        shown = key.key_id if isinstance(key, ApiKey) else key
        raise KeyError(f"{shown!r} is not a {provider} key of this pool (known: {known})")
    return found


class RedisKeyPool:
    """Round-robin over one provider's healthy keys, with cooldowns and disables every replica shares at once."""

    def __init__(self, redis: Redis, keys: KeySpace, provider: str, api_keys: Sequence[ApiKey], *,
                 clock: Callable[[], float] = time.time) -> None:
        wrong = [key.key_id for key in api_keys if key.provider != provider]
        if wrong:
            raise ValueError(f"keys of another provider given to the {provider} pool: {', '.join(wrong)}")
        self._redis = redis
        self._provider = provider
        self._keys = tuple(_unique_keys(api_keys))
        self._clock = clock
        # One hash tag per provider: the pick script and the transactions touch several of these keys.
        self._tag = hashtag(provider)
        self._cursor = keys.key("keypool", self._tag, "cursor")
        self._cooldown_hash = keys.key("keypool", self._tag, "cooldown")
        self._disabled_set = keys.key("keypool", self._tag, "disabled")
        self._space = keys
        self._pick = redis.register_script(_PICK)
        self._cool = redis.register_script(_COOLDOWN)

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        return self._keys

    def _info(self, key_id: str) -> str:
        return self._space.key("keypool", self._tag, "key", key_id)

    def _resolve(self, key: ApiKey | str) -> ApiKey:
        return resolve_key(self._provider, self._keys, key)

    async def pick(self) -> ApiKey:
        """The next healthy key, round-robin across every replica; ``NoKeyAvailable`` when there is none."""
        if not self._keys:
            EXHAUSTED.labels(self._provider, "none_configured").inc()
            raise NoKeyAvailable(self._provider, None, f"no {self._provider} API keys are configured")
        now = self._clock()
        status, value = await self._pick(
            keys=[self._cursor, self._cooldown_hash, self._disabled_set],
            args=[repr(now), *(key.key_id for key in self._keys)],
        )
        status = status.decode() if isinstance(status, bytes) else status
        if status == "ok":
            return self._keys[int(value)]
        if status == "cooling":
            EXHAUSTED.labels(self._provider, "cooling").inc()
            raise NoKeyAvailable(self._provider, max(0.0, float(value) - now))
        EXHAUSTED.labels(self._provider, "disabled").inc()
        raise NoKeyAvailable(self._provider, None)

    async def cooldown(self, key: ApiKey | str, seconds: float | None, reason: str) -> float:
        """Rest ``key`` for ``seconds`` (None: ``DEFAULT_COOLDOWN_S``); returns the deadline in force.

        A deadline only moves later: a shorter cooldown while a longer one runs changes nothing.
        """
        key = self._resolve(key)
        wait = DEFAULT_COOLDOWN_S if seconds is None or not math.isfinite(seconds) else seconds
        wait = min(max(wait, MIN_COOLDOWN_S), MAX_COOLDOWN_S)
        now = self._clock()
        applied, deadline = await self._cool(
            keys=[self._cooldown_hash, self._info(key.key_id)],
            args=[key.key_id, repr(now + wait), reason, repr(now)],
        )
        COOLDOWNS.labels(self._provider, "set" if applied else "kept").inc()
        if applied:
            log.warning("key %s cooling down for %.1fs: %s", key.masked, wait, reason,
                        extra={"provider": self._provider, "key_id": key.key_id})
        return float(deadline)

    async def disable(self, key: ApiKey | str, reason: str) -> None:
        """Take ``key`` out of the rotation until an operator calls ``enable`` (bad key, quota used up)."""
        key = self._resolve(key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self._disabled_set, key.key_id)
            pipe.hset(self._info(key.key_id), mapping={"disabled_reason": reason, "disabled_at": repr(self._clock())})
            added, _ = await pipe.execute()
        if added:
            DISABLES.labels(self._provider).inc()
            log.warning("key %s disabled: %s", key.masked, reason,
                        extra={"provider": self._provider, "key_id": key.key_id})

    async def enable(self, key_id: str) -> bool:
        """Operator action: put a disabled key back in the rotation. False when it was not disabled."""
        key = self._resolve(key_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.srem(self._disabled_set, key.key_id)
            pipe.hdel(self._info(key.key_id), "disabled_reason", "disabled_at")
            removed, _ = await pipe.execute()
        if removed:
            log.info("key %s enabled", key.masked, extra={"provider": self._provider, "key_id": key.key_id})
        return bool(removed)

    async def record(self, key: ApiKey | str, ok: bool) -> None:
        """Count one call's outcome for ``key``."""
        key = self._resolve(key)
        await self._redis.hincrby(self._info(key.key_id), "successes" if ok else "failures", 1)

    async def states(self) -> list[KeyState]:
        """Every key's state, read in one round trip; also refreshes the ``forgeline_keypool_keys`` gauge."""
        now = self._clock()
        ids = [key.key_id for key in self._keys]
        # A plain pipeline, not a transaction: this is a report, and redis-py 8.1's cluster transactions
        # break on replies it post-processes (SMEMBERS, HGETALL: "unexpected keyword argument 'keys'").
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.smembers(self._disabled_set)
            pipe.hgetall(self._cooldown_hash)
            for key_id in ids:
                pipe.hgetall(self._info(key_id))
            replies = await pipe.execute()
        disabled = {member.decode() for member in replies[0]}
        cooling = {name.decode(): value for name, value in replies[1].items()}
        deadlines = [cooling.get(key_id) for key_id in ids]
        infos = replies[2:]

        result: list[KeyState] = []
        for key, raw_deadline, raw_info in zip(self._keys, deadlines, infos, strict=True):
            info = {name.decode(): value.decode() for name, value in raw_info.items()}
            deadline = float(raw_deadline) if raw_deadline is not None else None
            cooling = deadline is not None and deadline > now
            state: KeyStatus = "disabled" if key.key_id in disabled else "cooling_down" if cooling else "healthy"
            result.append(KeyState(
                provider=self._provider, key_id=key.key_id, masked=key.masked, state=state,
                cooldown_until=_utc(deadline) if cooling else None,
                cooldown_reason=info.get("cooldown_reason") if cooling else None,
                disabled_reason=info.get("disabled_reason") if state == "disabled" else None,
                disabled_at=_utc(float(info["disabled_at"])) if state == "disabled" and "disabled_at" in info else None,
                successes=int(info.get("successes", 0)), failures=int(info.get("failures", 0)),
            ))
        for name in _STATES:
            KEY_STATES.labels(self._provider, name).set(sum(1 for s in result if s.state == name))
        return result


def _unique_keys(keys: Iterable[ApiKey]) -> list[ApiKey]:
    return list({key.key_id: key for key in keys}.values())


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
