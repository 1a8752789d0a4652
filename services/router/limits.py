"""Tenant limits for requests produced straight to Kafka: the bucket and the in-flight cap ingest applies.

A request that came through ingest was admitted there: ingest writes its job record before it
publishes it, so the router finds the record and checks nothing more. A request with no record was
produced straight to ``generation.requested``; the router admits it against its tenant's limits
with the same Lua call (``RateLimiter.admit``, one bucket and one in-flight set per tenant, shared by
every ingest and router replica), so producing to Kafka is no way around a tenant's limits.

Beyond the limits the request **fails at once** with ``rate_limited`` (retryable, ``retry_after_s``
set) instead of waiting in the router. A delay would hold a consumer slot, and with it the
partition's commit point, for as long as the tenant's excess lasts: every other tenant's requests
on that partition would wait behind it, and a redelivery after a rebalance would replay the whole
backlog. Failing fast is what ingest does with a 429, costs nothing to hold, and the terminal event
tells the producer when to send again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter

from services.common.contracts import RATE_LIMITED, ErrorInfo, GenerationFailed, GenerationRequested, webhook_fields
from services.common.ports import JobStore
from services.common.ratelimit import Admission, RateLimiter
from services.common.tenants import Caller, TenantLimits, TenantStore

log = logging.getLogger(__name__)

#: By registered tenant only: an unregistered tenant has no limits, so it is never refused.
REFUSED = Counter("forgeline_router_rate_limited_total",
                  "Requests produced straight to Kafka refused by their tenant's limits.", ["tenant", "reason"])


@dataclass
class KafkaNativeLimits:
    """Admits requests that did not come through ingest; ``refusal`` is their failure, or None."""

    tenants: TenantStore
    limiter: RateLimiter
    jobs: JobStore

    async def refusal(self, request: GenerationRequested) -> GenerationFailed | None:
        """The request's ``rate_limited`` terminal event when its tenant is over its limits; else None."""
        limits = await self.tenants.registered_limits(request.tenant)  # in-process for a few seconds
        if limits is None or not (limits.rate_per_s or limits.max_in_flight):
            return None  # no limits to hold it to: no Redis call at all
        if await self.jobs.get(request.job_id) is not None:
            return None  # ingest admitted it, or this router did on an earlier delivery
        admission = await self.limiter.admit(Caller(tenant=request.tenant, key_id=None, tenant_limits=limits),
                                             job_id=request.job_id)
        if admission.allowed:
            return None
        REFUSED.labels(request.tenant, admission.reason).inc()
        return GenerationFailed(
            job_id=request.job_id, tenant=request.tenant, trace=request.trace.child(), metadata=request.metadata,
            timings=request.timings, **webhook_fields(request),
            error=ErrorInfo(code=RATE_LIMITED, message=_why(request.tenant, limits, admission), stage="router",
                            retryable=True, retry_after_s=float(max(1, admission.retry_after_s))))


def _why(tenant: str, limits: TenantLimits, admission: Admission) -> str:
    if admission.reason == "in_flight":
        return (f"tenant {tenant!r} has {limits.max_in_flight} jobs in flight, its limit (max_in_flight); "
                "send it again when one of them ends")
    return (f"tenant {tenant!r} is over its rate limit ({limits.rate_per_s:g}/s, burst {admission.burst}); "
            f"send it again in {max(1, admission.retry_after_s)} s")
