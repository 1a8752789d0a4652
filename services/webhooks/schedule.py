"""When a failed delivery is tried again: the spec's schedule, jitter, and the receiver's Retry-After."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from services.common.retry_after import retry_after_seconds


def next_delay(schedule_s: Sequence[float], attempts_made: int, *, retry_after: str | None = None,
               jitter: float = 0.2, max_retry_after_s: float = 36000.0,
               uniform: Callable[[float, float], float] = random.uniform) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones; None when the schedule is used up.

    The schedule's wait gets up to ``jitter`` either way, so deliveries that failed together (a
    receiver's outage) do not come back together. A ``Retry-After`` longer than that wait wins, up to
    ``max_retry_after_s``; a shorter one does not bring the attempt forward.
    """
    if attempts_made >= len(schedule_s):
        return None
    delay = schedule_s[attempts_made] * uniform(1 - jitter, 1 + jitter)
    asked = retry_after_seconds(retry_after)
    if asked is not None:
        delay = max(delay, min(asked, max_retry_after_s))
    return delay
