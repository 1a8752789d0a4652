"""The ``RouteStats`` contract: jobs sent, counted by path."""

from __future__ import annotations


async def test_counts_by_path(impl):
    stats = impl.route_stats()
    assert await stats.counts() == {}

    for path in ("primary", "fallback", "primary", "primary"):
        await stats.count(path)

    assert await stats.counts() == {"primary": 3, "fallback": 1}
