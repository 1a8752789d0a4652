"""The routing decision: primary (free) or fallback (paid), from queue depth, measured rate and deadline.

Pure and synchronous (bar the ``PaidCapacity`` question), so it is tested without Kafka. The
router asks ``PaidCapacity`` before sending a job to the paid path: the seam the budget cap plugs in.
Two policies (``RoutingPolicy``), chosen by ``FORGELINE_ROUTER_POLICY``:

* ``DeadlinePolicy`` (the default): fallback when the estimated wait on primary (the jobs ahead
  of a free slot over the rate, with a floor on the rate) is past ``max_wait_s`` or past the request's deadline less the time
  one image takes; and once depth reaches ``depth_high``. ``forgeline simulate`` compares it
  with the others on a simulated day.
* ``HysteresisPolicy`` (the previous default), per request:

  * **with ``deadline_s``**: the primary's estimated wait is ``depth / rate`` (0 when nothing is
    waiting, infinite when something is and nothing is being served). Fallback when that wait is
    over the deadline; primary otherwise. No hysteresis: the deadline is the request's own.
  * **without a deadline**: the depth hysteresis — fallback once depth reaches ``high``, back to
    primary once it falls below ``low``.
  * **``priority == "high"``** goes to fallback sooner: against ``HIGH_PRIORITY_FACTOR`` (0.5) × the
    deadline, or 0.5 × both thresholds (a hysteresis band of its own, so high-priority traffic never
    moves the standard band, nor the other way round).

When the paid path refuses (budget spent), the job stays on primary — unless it has a deadline it
would miss there (estimated wait > ``deadline_s``, unscaled) and the request sets
``allow_placeholder``: then it goes to the fallback topic with ``decision.placeholder``, and the
generator renders a free procedural placeholder instead of calling a paid provider.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from services.common.contracts import GenerationRequested, Path, RouteDecision

if TYPE_CHECKING:
    from services.router.settings import RouterSettings

#: High priority is compared against this fraction of the deadline and of the depth thresholds.
HIGH_PRIORITY_FACTOR = 0.5

_REASON_MAX = 500


class RoutingPolicy(Protocol):
    """A routing rule: which path a request takes, given what the router measures of the primary."""

    def decide_request(self, request: GenerationRequested, depth: int, rate: float | None) -> RouteDecision:
        """``depth``: jobs waiting on primary; ``rate``: its measured images/s (None: unknown)."""


class PaidCapacity(Protocol):
    async def allows(self, request: GenerationRequested) -> tuple[bool, str]:
        """Whether the paid path may take ``request`` now, and why not if it may not."""


class UnlimitedPaidCapacity:
    """No budget configured: the paid path is always allowed."""

    async def allows(self, request: GenerationRequested) -> tuple[bool, str]:
        return True, "no budget cap configured"


def estimated_wait(depth: int, rate: float) -> float:
    """Seconds a new primary job waits: ``depth / rate``; 0 with nothing queued, inf with nothing served."""
    if depth <= 0:
        return 0.0
    if rate <= 0:
        return math.inf
    return depth / rate


def _fmt(seconds: float) -> str:
    return "inf" if math.isinf(seconds) else f"{seconds:.2f}"


def _clip(reason: str) -> str:
    return reason if len(reason) <= _REASON_MAX else reason[: _REASON_MAX - 1] + "…"


@dataclass
class _Band:
    high: int
    low: int
    path: Path = "primary"

    def decide(self, depth: int, label: str) -> tuple[Path, str, int]:
        if self.path == "primary" and depth >= self.high:
            self.path = "fallback"
            reason = f"{label}primary depth {depth} reached {self.high}: switching to fallback"
        elif self.path == "fallback" and depth < self.low:
            self.path = "primary"
            reason = f"{label}primary depth {depth} fell below {self.low}: back to primary"
        elif self.path == "primary":
            reason = f"{label}primary depth {depth} < {self.high}"
        else:
            reason = f"{label}primary depth {depth} still >= {self.low}: staying on fallback"
        return self.path, reason, self.high if self.path == "primary" else self.low


@dataclass
class HysteresisPolicy:
    """Primary until depth reaches ``high``; back to primary once it falls below ``low``.

    Two thresholds keep a depth hovering around one value from flapping between paths. High
    priority has its own band at ``HIGH_PRIORITY_FACTOR`` × the thresholds. Requests with a
    deadline are decided on estimated wait instead (see the module docstring).
    """

    high: int
    low: int
    path: Path = "primary"

    def __post_init__(self) -> None:
        self._standard = _Band(self.high, self.low, self.path)
        high = max(1, math.ceil(self.high * HIGH_PRIORITY_FACTOR))
        self._high_priority = _Band(high, min(high - 1, math.ceil(self.low * HIGH_PRIORITY_FACTOR)))

    def decide(self, depth: int, *, priority: str = "standard") -> RouteDecision:
        """The depth-only decision (no deadline), moving the priority's hysteresis band."""
        if priority == "high":
            path, reason, threshold = self._high_priority.decide(depth, "high priority: ")
        else:
            path, reason, threshold = self._standard.decide(depth, "")
            self.path = path
        return RouteDecision(path=path, reason=reason, primary_depth=depth, threshold=threshold, priority=priority)

    def decide_request(self, request: GenerationRequested, depth: int, rate: float | None) -> RouteDecision:
        """Deadline against estimated wait when both are known; the depth hysteresis otherwise."""
        wait = None if rate is None else estimated_wait(depth, rate)
        common = {"estimated_wait_s": wait, "service_rate": rate, "deadline_s": request.deadline_s,
                  "priority": request.priority}
        if request.deadline_s is None or wait is None:
            decision = self.decide(depth, priority=request.priority)
            if wait is not None:
                reason = f"{decision.reason} (no deadline; est. wait {_fmt(wait)} s at {rate:.2f}/s)"
                return decision.model_copy(update=common | {"reason": _clip(reason)})
            return decision.model_copy(update=common)
        factor = HIGH_PRIORITY_FACTOR if request.priority == "high" else 1.0
        limit = request.deadline_s * factor
        scaled = f"{factor:g} × deadline {request.deadline_s:g} s = {limit:g} s" if factor != 1 else \
            f"deadline {request.deadline_s:g} s"
        inputs = f"depth {depth} at {rate:.2f}/s: est. wait {_fmt(wait)} s"
        if wait > limit:
            path: Path = "fallback"
            reason = f"{request.priority} priority, {inputs} > {scaled}: fallback"
        else:
            path = "primary"
            reason = f"{request.priority} priority, {inputs} <= {scaled}: primary"
        threshold = self._high_priority.high if request.priority == "high" else self._standard.high
        return RouteDecision(path=path, reason=_clip(reason), primary_depth=depth, threshold=threshold, **common)


def misses_deadline(request: GenerationRequested, decision: RouteDecision) -> bool:
    """True when the primary's estimated wait is over the request's (unscaled) deadline."""
    return (request.deadline_s is not None and decision.estimated_wait_s is not None
            and decision.estimated_wait_s > request.deadline_s)


async def route(
    request: GenerationRequested, depth: int, policy: RoutingPolicy, paid: PaidCapacity,
    *, rate: float | None = None,
) -> RouteDecision:
    """Decide a path for ``request``; a fallback the paid path cannot take stays on primary.

    ``rate``: the primary's measured images/s (None: unknown, decide on depth alone). Refused,
    a job that would miss its deadline on primary and allows a placeholder goes to the fallback
    topic as a placeholder (no paid call) instead.
    """
    decision = policy.decide_request(request, depth, rate)
    if decision.path == "fallback":
        allowed, why = await paid.allows(request)
        if not allowed:
            if request.allow_placeholder and misses_deadline(request, decision):
                reason = f"{decision.reason}; but {why}; placeholder allowed: free placeholder on fallback"
                return decision.model_copy(update={"placeholder": True, "reason": _clip(reason)})
            return decision.model_copy(update={"path": "primary", "reason": _clip(f"{decision.reason}; but {why}")})
    return decision


@dataclass
class DeadlinePolicy:
    """Pay only for the jobs the free path would serve too late; never let its queue grow long.

    A job goes to fallback when its estimated wait on primary is over its limit. The wait counts
    the jobs that must finish before a slot frees for it, ``depth - slots + 1`` (depth counts the
    images in progress too; ``slots`` is how many the free path serves at once, one per Space),
    over ``rate``. Its limit is

    * ``max_wait_s``, for every job: in an overload the surplus has to be paid for anyway, and
      paying for it before the queue is long costs about the same and keeps every later job's wait
      short (on ``forgeline simulate``'s built-in day, 300 s rather than 1,800 s: a third of the
      p95 wait for 5 % more spend);
    * its deadline less one image's ``service_s``, when it has one — only then is paying worth it;
      for ``priority == "high"``, ``HIGH_PRIORITY_FACTOR`` × that, so a late estimate leaves room;
    * and whatever the rate says, never once ``depth`` reaches ``max_depth``.

    ``rate`` is the measured one, but never below ``min_rate``: a free path serving an image every
    20–60 s often completes nothing within the measuring window, and ``depth / 0`` would send every
    waiting job to the paid path. A primary that is really down still shows, as depth growing.
    """

    service_s: float = 40.0
    min_rate: float = 0.02
    max_wait_s: float = 300.0
    max_depth: int = 50
    slots: int = 2

    def decide_request(self, request: GenerationRequested, depth: int, rate: float | None) -> RouteDecision:
        serving = max(rate or 0.0, self.min_rate)
        wait = estimated_wait(max(0, depth - self.slots + 1), serving)
        limit, why = self.max_wait_s, f"max wait {self.max_wait_s:g} s"
        if request.deadline_s is not None:
            budget = request.deadline_s - self.service_s
            why_deadline = f"deadline {request.deadline_s:g} s - {self.service_s:g} s to serve it"
            if request.priority == "high":
                budget *= HIGH_PRIORITY_FACTOR
                why_deadline = f"high priority: {HIGH_PRIORITY_FACTOR:g} × ({why_deadline})"
            if budget < limit:
                limit, why = budget, why_deadline
        measured = "unmeasured" if rate is None else f"measured {rate:.3f}/s"
        inputs = (f"{request.priority} priority, depth {depth} on {self.slots} slots at {serving:.3f}/s ({measured}): "
                  f"est. wait {_fmt(wait)} s")
        if depth >= self.max_depth:
            path: Path = "fallback"
            reason = f"{inputs}; depth reached {self.max_depth}: fallback"
        elif wait > limit:
            path = "fallback"
            reason = f"{inputs} > {max(limit, 0):g} s ({why}): fallback"
        else:
            path = "primary"
            reason = f"{inputs} <= {limit:g} s ({why}): primary"
        return RouteDecision(path=path, reason=_clip(reason), primary_depth=depth,
                             threshold=min(self.max_depth, max(0, math.floor(limit * serving) + self.slots - 1)),
                             estimated_wait_s=wait, service_rate=rate, deadline_s=request.deadline_s,
                             priority=request.priority)


def policy_from_settings(settings: RouterSettings) -> RoutingPolicy:
    """The router's policy as configured (``FORGELINE_ROUTER_POLICY``)."""
    if settings.policy == "hysteresis":
        return HysteresisPolicy(high=settings.depth_high, low=settings.depth_low)
    return DeadlinePolicy(service_s=settings.primary_service_s, min_rate=settings.primary_min_rate,
                          max_wait_s=settings.max_wait_s, max_depth=settings.depth_high, slots=settings.primary_slots)
