"""The least any routing policy can pay on a day of arrivals, at a given p95 wait: what a target can ask for.

A fluid bound, no simulation: the free Spaces start at most ``capacity_per_s`` images a second
(their count over the mean service time), whatever the order they are served in. Take any span
of arrival times ``[a, b]``: every job arriving in it that the free path serves within ``wait_s``
starts in ``[a, b + wait_s]``, so at most ``slots + capacity × (b − a + wait_s)`` of them do (the
``slots`` Spaces may all be free at ``a``); the rest are
paid or wait longer. Summed over disjoint spans (a span's excess is never negative: an empty
choice is allowed), that is the number of jobs that must be paid or wait past ``wait_s``; a p95
wait of ``wait_s`` lets 5 % of the generated jobs wait longer, and every other one must be paid.

The bound knows the future and ignores outages, cold starts and the spread of service times, so
no online policy reaches it; a target below it cannot be met by any routing rule at that load.
"""

from __future__ import annotations

from collections.abc import Sequence


def excess_arrivals(arrivals_s: Sequence[float], *, capacity_per_s: float, wait_s: float, slots: int = 1) -> float:
    """Jobs that cannot all start within ``wait_s`` on the free path: the best sum over disjoint spans.

    ``arrivals_s`` are the generated jobs' arrival times, sorted. A dynamic programme over them:
    ``best[i]`` is the largest excess using the first ``i`` arrivals; a span from arrival ``a`` to
    ``i`` adds ``(i - a + 1) - slots - capacity × (t_i - t_a + wait_s)``. ``opened`` keeps the best span start
    so far, so the whole is linear.
    """
    best = 0.0
    opened = float("-inf")  # max over a of best[a] - a + capacity × t_a
    for index, at in enumerate(arrivals_s):
        opened = max(opened, best - index + capacity_per_s * at)
        best = max(best, opened + index + 1 - slots - capacity_per_s * (at + wait_s))
    return best


def least_paid(arrivals_s: Sequence[float], *, capacity_per_s: float, wait_s: float, slots: int = 1,
               tail_share: float = 0.05) -> int:
    """The fewest paid images that can hold a ``1 - tail_share`` quantile wait of ``wait_s`` (p95 by default)."""
    excess = excess_arrivals(sorted(arrivals_s), capacity_per_s=capacity_per_s, wait_s=wait_s, slots=slots)
    return max(0, round(excess - tail_share * len(arrivals_s)))
