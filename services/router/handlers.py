"""The routing decision: primary (free) or fallback (paid), from queue depth, with hysteresis.

Pure and synchronous, so it is tested without Kafka. The router asks ``PaidCapacity`` before
sending a job to the paid path: the seam where the budget cap plugs in (next issue).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.common.contracts import GenerationRequested, Path, RouteDecision


class PaidCapacity(Protocol):
    async def allows(self, request: GenerationRequested) -> tuple[bool, str]:
        """Whether the paid path may take ``request`` now, and why not if it may not."""


class UnlimitedPaidCapacity:
    """No budget configured: the paid path is always allowed."""

    async def allows(self, request: GenerationRequested) -> tuple[bool, str]:
        return True, "no budget cap configured"


@dataclass
class HysteresisPolicy:
    """Primary until depth reaches ``high``; back to primary once it falls below ``low``.

    Two thresholds keep a depth hovering around one value from flapping between paths.
    """

    high: int
    low: int
    path: Path = "primary"

    def decide(self, depth: int) -> RouteDecision:
        if self.path == "primary" and depth >= self.high:
            self.path = "fallback"
            reason = f"primary depth {depth} reached {self.high}: switching to fallback"
        elif self.path == "fallback" and depth < self.low:
            self.path = "primary"
            reason = f"primary depth {depth} fell below {self.low}: back to primary"
        elif self.path == "primary":
            reason = f"primary depth {depth} < {self.high}"
        else:
            reason = f"primary depth {depth} still >= {self.low}: staying on fallback"
        threshold = self.high if self.path == "primary" else self.low
        return RouteDecision(path=self.path, reason=reason, primary_depth=depth, threshold=threshold)


async def route(
    request: GenerationRequested, depth: int, policy: HysteresisPolicy, paid: PaidCapacity
) -> RouteDecision:
    """Decide a path for ``request``; a fallback the paid path cannot take stays on primary."""
    decision = policy.decide(depth)
    if decision.path == "fallback":
        allowed, why = await paid.allows(request)
        if not allowed:
            return decision.model_copy(update={"path": "primary", "reason": f"{decision.reason}; but {why}"})
    return decision
