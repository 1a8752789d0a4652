"""The monthly cap on paid generation, shared by every router and generator replica through Redis.

Money is integer micro-dollars everywhere (``usd("0.0023") == 2300``): Redis counters stay exact
and no replica rounds differently from another.

Per UTC calendar month ``budget:<YYYY-MM>`` holds ``spent`` and ``reserved``. A generator
``reserve``s a job's cost right before the paid call — one Lua script checks
``spent + reserved + cost <= cap`` and takes the reservation, so any number of replicas racing
for the last dollars cannot overshoot — then ``settle``s it (moved to ``spent``) or ``refund``s it.

**Tenants.** A reservation may name its tenant. A tenant with a monthly budget of its own
(``forgeline tenants set <name> --budget 5``) must fit under it *and* under the deployment's cap,
checked and held in the same script: concurrent workers can pass neither, and a tenant that spent
its budget stops paying while the others go on. A tenant without a budget draws on the
deployment's cap only. Keep the sum of the tenants' budgets at or below the deployment's cap, and
no tenant can take another's share of it.

Keys, under the service's ``KeySpace`` prefix, all in the hash slot ``{budget}``:

* ``{budget}:<month>`` hash ``spent``, ``reserved`` — the totals (and ``journaled`` once they
  were rebuilt from the spend journal);
* ``{budget}:<month>:held`` hash reservation id → cost, and ``{budget}:<month>:pending`` sorted set
  reservation id → expiry (ms): what is held, and when a crashed holder's hold is given back;
* ``{budget}:<month>:closed`` set of settled/refunded reservation ids: settle and refund happen once;
* ``{budget}:<month>:owners`` hash reservation id → tenant: whose cap the hold counts against, so a
  settle, refund or expiry moves that tenant's totals too (fields ``tenant:<name>:spent|reserved`` of
  the month's totals hash);
* ``{budget}:reservation:<call>`` hash — the paid call's current reservation (the replay guard: a
  redelivered Kafka record resuming the same call gets the same reservation back instead of
  reserving twice). ``Failover`` names calls ``<job>:<provider>:<seq>``.

Every key a script touches is passed in ``KEYS`` and shares the one hash tag, so the scripts run
on a Redis Cluster (one slot for the whole ledger: it is one counter anyway).

With a ``SpendJournal`` (``services/common/spend_journal.py``) every grant is also written
outside Redis before the paid call, and every settle or refund after it. When the month's totals
are missing their ``journaled`` mark (a new month, or a Redis that lost its data), no reservation
is granted until they were rebuilt from the journal; a journal that cannot be read refuses paid
reservations, so a lost ledger never lets the month overspend.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Literal, Protocol

from prometheus_client import Counter, Gauge
from redis.asyncio import Redis

from services.common import budget_lua as lua
from services.common.ports import SpendJournal
from services.common.redis import KeySpace, hashtag
from services.common.spend_journal import EntryState, SpendEntry, SpendJournalUnavailable

log = logging.getLogger(__name__)

MICROS_PER_USD = 1_000_000

BUDGET_SPENT = Gauge("forgeline_budget_spent_micros", "Paid spend settled this UTC month, in micro-dollars.")
BUDGET_RESERVED = Gauge("forgeline_budget_reserved_micros", "Paid spend reserved but not yet settled, micro-dollars.")
BUDGET_CAP = Gauge("forgeline_budget_cap_micros", "Monthly cap on paid spend, in micro-dollars.")
#: Per registered tenant (bounded: tenants are registered with ``forgeline tenants``); spend of any
#: tenant name not registered is summed under ``tenant="other"``.
TENANT_SPENT = Gauge("forgeline_budget_tenant_spent_micros", "A tenant's settled paid spend this UTC month.",
                     ["tenant"])
TENANT_RESERVED = Gauge("forgeline_budget_tenant_reserved_micros", "A tenant's paid spend reserved, not yet settled.",
                        ["tenant"])
TENANT_CAP = Gauge("forgeline_budget_tenant_cap_micros", "A tenant's own monthly cap (absent: none).", ["tenant"])
UNREGISTERED_TENANT = "other"
RESERVATIONS = Counter(
    "forgeline_budget_reservations_total",
    "Budget operations by outcome: granted, replayed, refused, refused_tenant, refused_unjournaled, settled, "
    "settled_late, refunded, "
    "duplicate, expired, rebuilt.",
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
    tenant: str | None = None  # whose monthly budget it counts against too (None: the deployment's only)


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


@dataclass(frozen=True)
class TenantBudget:
    """What the ledger knows of a tenant: registered or not, and its own monthly cap (None: none)."""

    registered: bool
    cap_micros: int | None = None


class TenantBudgets(Protocol):
    """Where the ledger reads a tenant's monthly cap (``tenants.TenantStore``, cached briefly)."""

    async def budget(self, tenant: str) -> TenantBudget: ...


@dataclass(frozen=True)
class TenantSpend:
    """One tenant's month: spent, reserved and its own cap (None: it draws on the deployment's only)."""

    tenant: str
    spent_micros: int
    reserved_micros: int
    cap_micros: int | None

    @property
    def remaining_micros(self) -> int | None:
        if self.cap_micros is None:
            return None
        return max(0, self.cap_micros - self.spent_micros - self.reserved_micros)

    def as_dict(self) -> dict[str, str | int | None]:
        """For ``/v1/status``: readable dollars, as the deployment's budget is shown."""
        remaining = self.remaining_micros
        return {"tenant": self.tenant, "spent": format_usd(self.spent_micros),
                "reserved": format_usd(self.reserved_micros),
                "cap": None if self.cap_micros is None else format_usd(self.cap_micros),
                "remaining": None if remaining is None else format_usd(remaining)}


class _NoTenantBudgets:
    async def budget(self, tenant: str) -> TenantBudget:
        return TenantBudget(registered=False)


def _tenant_totals(fields: dict[str, int]) -> dict[str, tuple[int, int]]:
    """``{tenant: (spent, reserved)}`` from the month hash's ``tenant:<name>:spent|reserved`` fields."""
    found: dict[str, tuple[int, int]] = {}
    for name, value in fields.items():
        kind, _, rest = name.partition(":")
        tenant, _, what = rest.rpartition(":")
        if kind != "tenant" or not tenant or what not in ("spent", "reserved"):
            continue
        spent, reserved = found.get(tenant, (0, 0))
        found[tenant] = (value, reserved) if what == "spent" else (spent, value)
    return found


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
        journal: SpendJournal | None = None,
        tenants: TenantBudgets | None = None,
    ) -> None:
        """``tenants``: where each tenant's own monthly cap is read (None: no tenant has one)."""
        if cap_micros < 0:
            raise ValueError("cap_micros must be >= 0")
        self._redis = redis
        self._keys = keys
        self.cap_micros = cap_micros
        self._clock = clock
        self._reservation_ttl_ms = int(reservation_ttl_s * 1000)
        self._record_ttl_s = record_ttl_s
        self._month_retention_s = month_retention_s
        self._reserve = redis.register_script(lua.RESERVE)
        self._close = redis.register_script(lua.CLOSE)
        self._snapshot = redis.register_script(lua.SNAPSHOT)
        self._seed = redis.register_script(lua.SEED)
        self._journal = journal
        self._tenants = tenants or _NoTenantBudgets()
        self._rebuilding: dict[str, asyncio.Future[bool]] = {}  # month -> the one rebuild in flight
        BUDGET_CAP.set(cap_micros)

    @property
    def reservation_ttl(self) -> timedelta:
        """How long an unsettled hold lasts: size the paid call's timeout below it."""
        return timedelta(milliseconds=self._reservation_ttl_ms)

    def current_month(self) -> str:
        return month_of(self._clock())

    def month_key(self, month: str | None = None) -> str:
        return self._keys.key(hashtag("budget"), month or self.current_month())

    def _month_keys(self, month: str) -> list[str]:
        base = self.month_key(month)
        return [base, base + ":pending", base + ":held", base + ":owners"]

    def _record_key(self, job_id: str) -> str:
        return self._keys.key(hashtag("budget"), "reservation", job_id)

    def _now_ms(self) -> int:
        return int(self._clock().timestamp() * 1000)

    def _observe(self, month: str, spent: int, reserved: int, released: int) -> None:
        if released:
            RESERVATIONS.labels("expired").inc(released)
            log.warning("budget %s: released %d abandoned reservation(s)", month, released)
        if month == self.current_month():
            BUDGET_SPENT.set(spent)
            BUDGET_RESERVED.set(reserved)

    async def reserve(self, job_id: str, cost_micros: int, *, tenant: str | None = None) -> Reservation | None:
        """Hold ``cost_micros`` for ``job_id`` if the month's cap (and ``tenant``'s own) allows it; None if not.

        The same job gets its existing reservation back (``replayed=True``) while it is held or
        after it was settled; after a refund or expiry it reserves afresh.
        """
        if cost_micros <= 0:
            raise ValueError("cost_micros must be > 0")
        now = self._clock()
        now_ms = int(now.timestamp() * 1000)
        month = month_of(now)
        budget = await self._tenants.budget(tenant) if tenant else TenantBudget(registered=False)
        tenant_cap = -1 if budget.cap_micros is None else budget.cap_micros
        for _ in range(2):  # a second round only after rebuilding the month from the journal
            reply = await self._reserve(
                keys=[*self._month_keys(month), self._record_key(job_id)],
                args=[now_ms, f"{job_id}:{uuid.uuid4().hex[:12]}", cost_micros, self.cap_micros,
                      now_ms + self._reservation_ttl_ms, self._record_ttl_s, self._month_retention_s, month,
                      1 if self._journal is not None else 0, tenant or "", tenant_cap],
            )
            outcome, rid, cost, res_month, expires_ms, state, spent, reserved, released, t_spent, t_reserved = (
                v.decode() if isinstance(v, bytes) else v for v in reply)
            if outcome != "unseeded" or not await self._rebuild(month):
                break
        if outcome == "unseeded":
            RESERVATIONS.labels("refused_unjournaled").inc()
            return None
        self._observe(month, int(spent), int(reserved), int(released))
        if tenant:
            self._observe_tenant(month, TenantSpend(tenant, int(t_spent), int(t_reserved), budget.cap_micros),
                                 registered=budget.registered)
        if outcome in ("refused", "refused_tenant"):
            RESERVATIONS.labels(outcome).inc()
            return None
        reservation = Reservation(
            job_id=job_id, reservation_id=rid, cost_micros=int(cost), month=res_month,
            expires_at=datetime.fromtimestamp(int(expires_ms) / 1000, UTC),
            state="settled" if state == "settled" else "reserved", replayed=outcome == "existing", tenant=tenant,
        )
        if outcome == "granted" and not await self._write(reservation, "held", reservation.cost_micros):
            # Not on record outside Redis: a lost ledger would forget it, so the call is not made.
            await self._finish(reservation, "refunded", 0, journal=False)
            RESERVATIONS.labels("refused_unjournaled").inc()
            return None
        RESERVATIONS.labels("granted" if outcome == "granted" else "replayed").inc()
        return reservation

    def _observe_tenant(self, month: str, spend: TenantSpend, *, registered: bool) -> None:
        """The tenant's gauges; only registered tenants get a label of their own (bounded cardinality)."""
        if month != self.current_month() or not registered:
            return
        TENANT_SPENT.labels(spend.tenant).set(spend.spent_micros)
        TENANT_RESERVED.labels(spend.tenant).set(spend.reserved_micros)
        if spend.cap_micros is not None:
            TENANT_CAP.labels(spend.tenant).set(spend.cap_micros)

    async def _write(self, reservation: Reservation, state: EntryState, cost: int) -> bool:
        if self._journal is None:
            return True
        try:
            await self._journal.write(SpendEntry(
                reservation_id=reservation.reservation_id, call=reservation.job_id, month=reservation.month,
                cost_micros=cost, state=state, expires_ms=int(reservation.expires_at.timestamp() * 1000),
                tenant=reservation.tenant))
        except SpendJournalUnavailable as exc:
            log.warning("budget %s: %s", reservation.month, exc)
            return False
        return True

    async def _rebuild(self, month: str) -> bool:
        """Seed the month's totals from the journal; False (refuse paid calls) when it cannot be read.

        One read of the journal at a time per month: at a month's start every job in flight finds the
        totals unseeded, and each listing the journal would be hundreds of S3 listings for one answer.
        """
        running = self._rebuilding.get(month)
        if running is None:
            running = self._rebuilding[month] = asyncio.ensure_future(self._read_journal(month))
            running.add_done_callback(lambda _: self._rebuilding.pop(month, None))
        return await asyncio.shield(running)  # a caller's cancellation leaves the others' rebuild running

    async def _read_journal(self, month: str) -> bool:
        assert self._journal is not None
        try:
            entries = await self._journal.month(month)
        except SpendJournalUnavailable as exc:
            log.error("budget %s: the spend record cannot be read, so paid calls are refused: %s", month, exc)
            return False
        args: list[str | int] = [self._month_retention_s]
        for entry in entries:
            args += [entry.reservation_id, entry.state, entry.cost_micros, entry.expires_ms, entry.tenant or ""]
        base = self._month_keys(month)
        if await self._seed(keys=[*base, base[0] + ":closed"], args=args):
            RESERVATIONS.labels("rebuilt").inc()
            log.warning("budget %s: totals rebuilt from %d journal entries", month, len(entries))
        return True

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

    async def _finish(self, reservation: Reservation, mode: EntryState, actual: int, *, journal: bool = True) -> bool:
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
        if journal and not await self._write(reservation, mode, actual):
            # The journal keeps it "held" at its reserved cost: a rebuild counts it as spent, never less.
            log.warning("budget %s: %s of %s not on record; a rebuild counts it as held",
                        reservation.month, mode, reservation.reservation_id)
        late = mode == "settled" and outcome == "expired"
        RESERVATIONS.labels("settled_late" if late else mode).inc()
        if late:
            log.warning("budget %s: job %s settled after its reservation expired; raise reservation_ttl_s",
                        reservation.month, reservation.job_id)
        return True

    async def snapshot(self, month: str | None = None) -> BudgetSnapshot:
        """The month's totals (default: the current UTC month), after giving back abandoned holds."""
        snap, _ = await self._read(month or self.current_month(), "")
        return snap

    async def snapshot_with_tenant(self, tenant: str) -> tuple[BudgetSnapshot, TenantSpend]:
        """This month's totals and ``tenant``'s, from the same script call (the router's budget gate)."""
        snap, (spent, reserved) = await self._read(self.current_month(), tenant)
        budget = await self._tenants.budget(tenant)
        return snap, TenantSpend(tenant, spent, reserved, budget.cap_micros)

    async def _read(self, month: str, tenant: str) -> tuple[BudgetSnapshot, tuple[int, int]]:
        """The month's totals after the sweep, and ``tenant``'s spent and reserved ('': none, zeros)."""
        spent, reserved, released, journaled, t_spent, t_reserved = await self._snapshot(
            keys=self._month_keys(month), args=[self._now_ms(), tenant])
        if self._journal is not None and not int(journaled):
            if not await self._rebuild(month):
                # Unknown spend: show the rest of the month as held, so no gate sends work to the paid path.
                return BudgetSnapshot(month=month, cap_micros=self.cap_micros, spent_micros=int(spent),
                                      reserved_micros=max(int(reserved), self.cap_micros - int(spent))), \
                    (int(t_spent), int(t_reserved))
            spent, reserved, released, _, t_spent, t_reserved = await self._snapshot(
                keys=self._month_keys(month), args=[self._now_ms(), tenant])
        self._observe(month, int(spent), int(reserved), int(released))
        return BudgetSnapshot(month=month, cap_micros=self.cap_micros, spent_micros=int(spent),
                              reserved_micros=int(reserved)), (int(t_spent), int(t_reserved))

    async def tenant_spend(self, month: str | None = None) -> dict[str, TenantSpend]:
        """Every tenant that reserved this month (default: the current one), with its own cap.

        After ``snapshot`` (which gives back abandoned holds and rebuilds a lost month first).
        """
        month = month or self.current_month()
        await self.snapshot(month)
        raw = await self._redis.hgetall(self.month_key(month))
        fields = {name.decode(): int(value) for name, value in raw.items() if name.startswith(b"tenant:")}
        found: dict[str, TenantSpend] = {}
        other = [0, 0]
        for tenant, (spent, reserved) in sorted(_tenant_totals(fields).items()):
            budget = await self._tenants.budget(tenant)
            found[tenant] = spend = TenantSpend(tenant, spent, reserved, budget.cap_micros)
            self._observe_tenant(month, spend, registered=budget.registered)
            if not budget.registered:
                other[0] += spent
                other[1] += reserved
        if month == self.current_month():
            TENANT_SPENT.labels(UNREGISTERED_TENANT).set(other[0])
            TENANT_RESERVED.labels(UNREGISTERED_TENANT).set(other[1])
        return found

    async def tenant_snapshot(self, tenant: str, month: str | None = None) -> TenantSpend:
        """``tenant``'s month: what it spent and holds, and its own cap (None: none), after the sweep."""
        _, (spent, reserved) = await self._read(month or self.current_month(), tenant)
        budget = await self._tenants.budget(tenant)
        return TenantSpend(tenant, spent, reserved, budget.cap_micros)
