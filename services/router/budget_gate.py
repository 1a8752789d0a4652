"""The router's budget gate: may the paid path take one more job this month?"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from services.common.budget import format_usd
from services.common.contracts import GenerationRequested
from services.common.ports import BudgetLedger

log = logging.getLogger(__name__)


class BudgetGate:
    """The router's ``PaidCapacity``: is there budget left for one more image on the cheapest paid provider?

    A cheap, advisory check — replicas may race past it; the generator's ``reserve`` right before
    the paid call is what actually holds the cap.
    """

    def __init__(self, ledger: BudgetLedger, *, cheapest_cost_micros: int) -> None:
        if cheapest_cost_micros <= 0:
            raise ValueError("cheapest_cost_micros must be > 0")
        self._ledger = ledger
        self._cost = cheapest_cost_micros

    async def allows(self, request: GenerationRequested) -> tuple[bool, str]:
        """Room for one image under the deployment's cap, and under the request's tenant's own, if it has one."""
        try:
            snap, tenant = await self._ledger.snapshot_with_tenant(request.tenant)
        except RedisError as exc:
            # Refusing keeps the job on the free path; allowing would only move the failure to
            # the generator's reservation.
            log.warning("budget gate: ledger unavailable: %r", exc)
            return False, f"budget ledger unavailable ({type(exc).__name__})"
        if snap.remaining_micros < self._cost:
            committed = snap.spent_micros + snap.reserved_micros
            return False, f"monthly budget {format_usd(committed)} of {format_usd(snap.cap_micros)} spent"
        left = tenant.remaining_micros
        if left is not None and tenant.cap_micros is not None and left < self._cost:
            committed = tenant.spent_micros + tenant.reserved_micros
            return False, (f"tenant {request.tenant!r}'s monthly budget {format_usd(committed)} of "
                           f"{format_usd(tenant.cap_micros)} spent")
        mine = "" if left is None else f"; tenant {request.tenant!r}: {format_usd(left)} left"
        return True, f"monthly budget {format_usd(snap.remaining_micros)} of {format_usd(snap.cap_micros)} left{mine}"
