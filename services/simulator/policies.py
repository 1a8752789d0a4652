"""The policies a simulation compares: the design's fixed rule and the router's own two.

``hysteresis`` and ``deadline`` are built by the router's ``policy_from_settings``, from the
same ``RouterSettings`` the router reads (``FORGELINE_ROUTER_*``), with a sweep's overrides. The
fixed rule is the design's starting point, kept here because the router does not run it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.common.contracts import GenerationRequested, Path, RouteDecision
from services.router.policy import RoutingPolicy, policy_from_settings
from services.router.settings import RouterSettings


@dataclass
class FixedDepthRule:
    """"Queue depth < ``threshold`` → Spaces, otherwise paid", blind to deadlines, priorities and rate."""

    threshold: int = 50

    def decide_request(self, request: GenerationRequested, depth: int, rate: float | None) -> RouteDecision:
        path: Path = "fallback" if depth >= self.threshold else "primary"
        sign = ">=" if path == "fallback" else "<"
        return RouteDecision(path=path, reason=f"fixed rule: primary depth {depth} {sign} {self.threshold}",
                             primary_depth=depth, threshold=self.threshold, priority=request.priority)


@dataclass(frozen=True)
class NamedPolicy:
    """A policy under a name, and the family its sweep belongs to (one line on the plot)."""

    name: str
    family: str
    factory: Callable[[], RoutingPolicy]


def fixed_rule(threshold: int = 50) -> NamedPolicy:
    return NamedPolicy(f"fixed depth {threshold}", "fixed depth rule", lambda: FixedDepthRule(threshold))


def router_policy(settings: RouterSettings, kind: str, **overrides: Any) -> NamedPolicy:
    """The router's ``kind`` policy ("hysteresis" or "deadline") from ``settings`` with ``overrides``."""
    configured = settings.model_copy(update={"policy": kind, **overrides})
    label = " ".join(f"{key}={value:g}" for key, value in overrides.items())
    family = {"hysteresis": "hysteresis (old default)", "deadline": "deadline (default)"}[kind]
    return NamedPolicy(f"{kind} {label}".strip(), family, lambda: policy_from_settings(configured))


def compared(settings: RouterSettings) -> list[NamedPolicy]:
    """The three the issue compares: the fixed depth-50 rule, the router's old default and its new one."""
    return [fixed_rule(50), router_policy(settings, "hysteresis"), router_policy(settings, "deadline")]


#: The sweeps drawn on the plot next to the three: the fixed rule's threshold, the deadline policy's max wait.
FIXED_THRESHOLDS = (10, 20, 35, 75, 100, 200)
MAX_WAITS_S = (60.0, 120.0, 600.0, 900.0, 1800.0)


def sweeps(settings: RouterSettings) -> list[NamedPolicy]:
    return [fixed_rule(threshold) for threshold in FIXED_THRESHOLDS] + [
        router_policy(settings, "deadline", max_wait_s=wait) for wait in MAX_WAITS_S]
