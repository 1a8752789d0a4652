"""The monthly cap on paid generation, shared by every router and generator replica through Redis.

Money is integer micro-dollars everywhere (``usd("0.0023") == 2300``): Redis counters stay exact
and no replica rounds differently from another.

Per UTC calendar month ``budget:<YYYY-MM>`` holds ``spent`` and ``reserved``. A generator
``reserve``s a job's cost right before the paid call — one Lua script checks
``spent + reserved + cost <= cap`` and takes the reservation, so any number of replicas racing
for the last dollars cannot overshoot — then ``settle``s it (moved to ``spent``) or ``refund``s it.

Keys, under the service's ``KeySpace`` prefix:

* ``budget:<month>`` hash ``spent``, ``reserved`` — the totals;
* ``budget:<month>:held`` hash reservation id → cost, and ``budget:<month>:pending`` sorted set
  reservation id → expiry (ms): what is held, and when a crashed holder's hold is given back;
* ``budget:<month>:closed`` set of settled/refunded reservation ids: settle and refund happen once;
* ``budget:reservation:<job_id>`` hash — the job's current reservation (the replay guard: a
  redelivered Kafka record gets the same reservation back instead of reserving twice).

Every key a script touches is passed in ``KEYS``, so the scripts stay valid on a Redis Cluster.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal

from prometheus_client import Counter, Gauge
from redis.asyncio import Redis

from services.common.redis import KeySpace

log = logging.getLogger(__name__)

MICROS_PER_USD = 1_000_000

BUDGET_SPENT = Gauge("forgeline_budget_spent_micros", "Paid spend settled this UTC month, in micro-dollars.")
BUDGET_RESERVED = Gauge("forgeline_budget_reserved_micros", "Paid spend reserved but not yet settled, micro-dollars.")
BUDGET_CAP = Gauge("forgeline_budget_cap_micros", "Monthly cap on paid spend, in micro-dollars.")
RESERVATIONS = Counter(
    "forgeline_budget_reservations_total",
    "Budget operations by outcome: granted, replayed, refused, settled, settled_late, refunded, duplicate, expired.",
    ["outcome"],
)


# ------------------------------------------------------------------------------------ money


def usd(amount: str | float | Decimal) -> int:
    """Micro-dollars from ``"$10"``, ``"0.0023"``, ``Decimal`` or a number.

    Refuses amounts finer than a micro-dollar rather than rounding: a silently rounded cap or
    price is a budget nobody configured.
    """
    if isinstance(amount, bool):
        raise TypeError("a bool is not an amount of money")
    text = str(amount).strip().replace("_", "").replace(",", "")
    negative = text.startswith("-")
    text = text.lstrip("+-").removeprefix("$").strip()
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{amount!r} is not an amount of US dollars") from None
    if not value.is_finite():
        raise ValueError(f"{amount!r} is not a finite amount")
    micros = value * MICROS_PER_USD
    if micros != micros.to_integral_value():
        raise ValueError(f"{amount!r} is finer than a micro-dollar")
    return -int(micros) if negative else int(micros)


def format_usd(micros: int) -> str:
    """``2300 → "$0.0023"``, ``10_000_000 → "$10.00"``: cents always, further digits only when set."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_USD)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}${whole}.{digits}"


def month_of(moment: datetime) -> str:
    """The UTC calendar month ``YYYY-MM`` of an aware datetime (a naive one is a bug: whose midnight?)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("month_of needs a timezone-aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m")


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------------ scripts

# Gives back holds whose expiry passed (a replica crashed between reserve and settle). Bounded per
# call so one script never blocks Redis for long; the next call carries on.
# KEYS[1] month totals, KEYS[2] pending, KEYS[3] held.
_SWEEP = """
local function sweep(now)
  local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 512)
  for _, rid in ipairs(stale) do
    local held = redis.call('HGET', KEYS[3], rid)
    if held then
      redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. held)
      redis.call('HDEL', KEYS[3], rid)
    end
    redis.call('ZREM', KEYS[2], rid)
  end
  return #stale
end
local function totals()
  local t = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
  return tonumber(t[1] or '0'), tonumber(t[2] or '0')
end
local function keep(ttl)
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
end
"""

# KEYS: month, pending, held, job record.
# ARGV: now ms, new reservation id, cost, cap, expiry ms, record ttl s, month ttl s, month.
# Returns {outcome, rid, cost, month, expiry ms, state, spent, reserved, released}.
_RESERVE = _SWEEP + """
local released = sweep(ARGV[1])
local spent, reserved = totals()
local job = redis.call('HMGET', KEYS[4], 'rid', 'cost', 'month', 'expires', 'state')
-- A replay: a held (unexpired) or settled reservation is the job's; a refunded or expired one
-- is not, and the job may try again against the cap.
if job[1] and (job[5] == 'settled' or (job[5] == 'reserved' and tonumber(job[4]) > tonumber(ARGV[1]))) then
  return {'existing', job[1], tonumber(job[2]), job[3], tonumber(job[4]), job[5], spent, reserved, released}
end
local cost = tonumber(ARGV[3])
if spent + reserved + cost > tonumber(ARGV[4]) then
  return {'refused', '', cost, ARGV[8], 0, '', spent, reserved, released}
end
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[3])
redis.call('HSETNX', KEYS[1], 'spent', '0')
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], 'rid', ARGV[2], 'cost', ARGV[3], 'month', ARGV[8], 'expires', ARGV[5], 'state', 'reserved')
redis.call('EXPIRE', KEYS[4], ARGV[6])
keep(ARGV[7])
return {'granted', ARGV[2], cost, ARGV[8], tonumber(ARGV[5]), 'reserved', spent, reserved + cost, released}
"""

# KEYS: month, pending, held, closed, job record.  ARGV: rid, 'settled' | 'refunded', actual cost, month ttl s.
# Returns {outcome, spent, reserved}: 'duplicate' (already closed), 'held' or 'expired' (the hold
# had already been swept; a settle still counts, because the money was spent).
_CLOSE = _SWEEP + """
local rid = ARGV[1]
if redis.call('SADD', KEYS[4], rid) == 0 then
  local spent, reserved = totals()
  return {'duplicate', spent, reserved}
end
local held = redis.call('HGET', KEYS[3], rid)
if held then
  redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. held)
  redis.call('HDEL', KEYS[3], rid)
  redis.call('ZREM', KEYS[2], rid)
end
if ARGV[2] == 'settled' then redis.call('HINCRBY', KEYS[1], 'spent', ARGV[3]) end
-- Only the job's current reservation moves its state; a superseded one leaves the record alone.
if redis.call('HGET', KEYS[5], 'rid') == rid then redis.call('HSET', KEYS[5], 'state', ARGV[2]) end
keep(ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
local spent, reserved = totals()
return {held and 'held' or 'expired', spent, reserved}
"""

# KEYS: month, pending, held.  ARGV: now ms.  Sweeps too: if the only holds left are a dead
# replica's, nobody may reserve, and a gate reading unswept totals would refuse forever.
_SNAPSHOT = _SWEEP + """
local released = sweep(ARGV[1])
local spent, reserved = totals()
return {spent, reserved, released}
"""


# ------------------------------------------------------------------------------------ ledger


@dataclass(frozen=True)
class Reservation:
    """A hold on ``cost_micros`` of ``month``'s budget for one job.

    ``state == "settled"`` (only from a replayed ``reserve``) means the job's paid call already
    happened and was paid for: do not call the provider again.
    """

    job_id: str
    reservation_id: str
    cost_micros: int
    month: str
    expires_at: datetime
    state: Literal["reserved", "settled"] = "reserved"
    replayed: bool = False


@dataclass(frozen=True)
class BudgetSnapshot:
    month: str
    cap_micros: int
    spent_micros: int
    reserved_micros: int

    @property
    def remaining_micros(self) -> int:
        return max(0, self.cap_micros - self.spent_micros - self.reserved_micros)

    def as_dict(self) -> dict[str, str | int]:
        """For ``/v1/status``: exact micros and readable dollars."""
        return {
            "month": self.month, "cap_micros": self.cap_micros, "spent_micros": self.spent_micros,
            "reserved_micros": self.reserved_micros, "remaining_micros": self.remaining_micros,
            "cap": format_usd(self.cap_micros), "spent": format_usd(self.spent_micros),
            "reserved": format_usd(self.reserved_micros), "remaining": format_usd(self.remaining_micros),
        }


class RedisBudgetLedger:
    """Reserve, settle and refund paid spend against a monthly cap; safe for any number of replicas.

    ``reservation_ttl_s`` must exceed the longest paid call (provider timeout plus retries): a hold
    older than that is presumed abandoned and given back, and a settle arriving after it still
    counts as spent — honest, but it can then take the month past the cap.
    """

    def __init__(
        self,
        redis: Redis,
        keys: KeySpace,
        *,
        cap_micros: int,
        clock: Callable[[], datetime] = _utcnow,
        reservation_ttl_s: float = 15 * 60,
        record_ttl_s: int = 2 * 24 * 3600,
        month_retention_s: int = 100 * 24 * 3600,
    ) -> None:
        if cap_micros < 0:
            raise ValueError("cap_micros must be >= 0")
        self._redis = redis
        self._keys = keys
        self.cap_micros = cap_micros
        self._clock = clock
        self._reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self._record_ttl_s = record_ttl_s
        self._month_retention_s = month_retention_s
        self._reserve = redis.register_script(_RESERVE)
        self._close = redis.register_script(_CLOSE)
        self._snapshot = redis.register_script(_SNAPSHOT)
        BUDGET_CAP.set(cap_micros)

    @property
    def reservation_ttl(self) -> timedelta:
        """How long an unsettled hold lasts: size the paid call's timeout below it."""
        return timedelta(milliseconds=self._reservation_ttl_ms)

    def current_month(self) -> str:
        return month_of(self._clock())

    def month_key(self, month: str | None = None) -> str:
        return self._keys.key("budget", month or self.current_month())

    def _month_keys(self, month: str) -> list[str]:
        base = self.month_key(month)
        return [base, base + ":pending", base + ":held"]

    def _record_key(self, job_id: str) -> str:
        return self._keys.key("budget", "reservation", job_id)

    def _now_ms(self) -> int:
        return int(self._clock().timestamp() * 1000)

    def _observe(self, month: str, spent: int, reserved: int, released: int) -> None:
        if released:
            RESERVATIONS.labels("expired").inc(released)
            log.warning("budget %s: released %d abandoned reservation(s)", month, released)
        if month == self.current_month():
            BUDGET_SPENT.set(spent)
            BUDGET_RESERVED.set(reserved)

    async def reserve(self, job_id: str, cost_micros: int) -> Reservation | None:
        """Hold ``cost_micros`` for ``job_id`` if the month's cap allows it; None if it does not.

        The same job gets its existing reservation back (``replayed=True``) while it is held or
        after it was settled; after a refund or expiry it reserves afresh.
        """
        if cost_micros <= 0:
            raise ValueError("cost_micros must be > 0")
        now = self._clock()
        now_ms = int(now.timestamp() * 1000)
        month = month_of(now)
        reply = await self._reserve(
            keys=[*self._month_keys(month), self._record_key(job_id)],
            args=[now_ms, f"{job_id}:{uuid.uuid4().hex[:12]}", cost_micros, self.cap_micros,
                  now_ms + self._reservation_ttl_ms, self._record_ttl_s, self._month_retention_s, month],
        )
        outcome, rid, cost, res_month, expires_ms, state, spent, reserved, released = (
            v.decode() if isinstance(v, bytes) else v for v in reply)
        self._observe(month, int(spent), int(reserved), int(released))
        if outcome == "refused":
            RESERVATIONS.labels("refused").inc()
            return None
        RESERVATIONS.labels("granted" if outcome == "granted" else "replayed").inc()
        return Reservation(
            job_id=job_id, reservation_id=rid, cost_micros=int(cost), month=res_month,
            expires_at=datetime.fromtimestamp(int(expires_ms) / 1000, UTC),
            state="settled" if state == "settled" else "reserved", replayed=outcome == "existing",
        )

    async def settle(self, reservation: Reservation, actual_cost_micros: int | None = None) -> bool:
        """Move the hold to ``spent`` at ``actual_cost_micros`` (default: the reserved cost).

        Counted in the month it was reserved in, since that is the month whose cap allowed it.
        False when it was already settled or refunded.
        """
        actual = reservation.cost_micros if actual_cost_micros is None else actual_cost_micros
        if actual < 0:
            raise ValueError("actual_cost_micros must be >= 0")
        return await self._finish(reservation, "settled", actual)

    async def refund(self, reservation: Reservation) -> bool:
        """Give the hold back (the provider failed). False when already settled or refunded."""
        return await self._finish(reservation, "refunded", 0)

    async def _finish(self, reservation: Reservation, mode: str, actual: int) -> bool:
        base = self._month_keys(reservation.month)
        reply = await self._close(
            keys=[*base, base[0] + ":closed", self._record_key(reservation.job_id)],
            args=[reservation.reservation_id, mode, actual, self._month_retention_s],
        )
        outcome, spent, reserved = (v.decode() if isinstance(v, bytes) else v for v in reply)
        self._observe(reservation.month, int(spent), int(reserved), 0)
        if outcome == "duplicate":
            RESERVATIONS.labels("duplicate").inc()
            return False
        late = mode == "settled" and outcome == "expired"
        RESERVATIONS.labels("settled_late" if late else mode).inc()
        if late:
            log.warning("budget %s: job %s settled after its reservation expired; raise reservation_ttl_s",
                        reservation.month, reservation.job_id)
        return True

    async def snapshot(self, month: str | None = None) -> BudgetSnapshot:
        """The month's totals (default: the current UTC month), after giving back abandoned holds."""
        month = month or self.current_month()
        spent, reserved, released = await self._snapshot(keys=self._month_keys(month), args=[self._now_ms()])
        self._observe(month, int(spent), int(reserved), int(released))
        return BudgetSnapshot(month=month, cap_micros=self.cap_micros, spent_micros=int(spent),
                              reserved_micros=int(reserved))
