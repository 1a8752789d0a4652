"""The primary path's queue depth and service rate, refreshed in the background (never one admin call per message)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Gauge

from services.common.contracts import Path
from services.common.lag import group_positions
from services.common.queue_position import RedisQueueBook
from services.router.policy import estimated_wait

log = logging.getLogger(__name__)

PRIMARY_DEPTH = Gauge("forgeline_router_primary_depth", "Primary path queue depth as the router sees it.")
PRIMARY_RATE = Gauge("forgeline_router_primary_rate", "Measured primary service rate, images per second.")


async def group_position(
    admin: AIOKafkaAdminClient, offsets_client: AIOKafkaConsumer, topic: str, group_id: str
) -> tuple[int, int]:
    """``(lag, committed)`` of ``group_id`` on ``topic``, summed over partitions.

    ``committed`` is the sum of the group's positions: its growth over time is the service rate.
    """
    positions = (await group_positions(admin, offsets_client, topic, group_id)).values()
    return sum(max(0, end - position) for position, end in positions), sum(position for position, _ in positions)


class RateWindow:
    """Images per second from ``(time, committed total)`` samples over a sliding window."""

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, committed: int) -> None:
        if self._samples and committed < self._samples[-1][1]:
            self._samples.clear()  # offsets reset or partitions gone: start measuring afresh
        self._samples.append((at, committed))
        # Keep the newest sample at or before the window's start, so the window is always covered.
        while len(self._samples) > 2 and self._samples[1][0] <= at - self.window_s:
            self._samples.popleft()

    @property
    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


class DepthMonitor:
    """Measured lag of the primary generators, plus what this router sent since the measurement.

    Between two measurements a burst of requests would all see the same stale depth; counting
    the jobs this router routed to primary since the last measurement began closes that gap.
    Each refresh also samples the group's committed offsets: their growth over the last
    ``rate_window_s`` is the primary's measured service rate.
    """

    def __init__(
        self, position: Callable[[], Awaitable[tuple[int, int]]], *, refresh_s: float, rate_window_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``position``: reads ``(lag, committed)`` of the primary group (the simulator passes its own model)."""
        self._position = position
        self._refresh_s = refresh_s
        self._clock = clock
        self._window = RateWindow(rate_window_s)
        self._measured = 0
        self._sent = 0
        self._sent_at_measure = 0
        self._ready = asyncio.Event()

    @classmethod
    def for_group(
        cls, admin: AIOKafkaAdminClient, offsets: AIOKafkaConsumer, *, topic: str, group_id: str, refresh_s: float,
        rate_window_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
    ) -> DepthMonitor:
        """The monitor of ``group_id``'s position on ``topic``, read from the broker."""
        return cls(lambda: group_position(admin, offsets, topic, group_id), refresh_s=refresh_s,
                   rate_window_s=rate_window_s, clock=clock)

    @property
    def depth(self) -> int:
        return self._measured + (self._sent - self._sent_at_measure)

    @property
    def rate(self) -> float:
        """Primary images per second over the sliding window (0 until two refreshes)."""
        return self._window.rate

    @property
    def estimated_wait_s(self) -> float:
        """depth / rate: 0 when nothing waits, ``math.inf`` when something waits and nothing is served."""
        return estimated_wait(self.depth, self.rate)

    def routed_to_primary(self) -> None:
        self._sent += 1

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def refresh(self) -> int:
        sent_before = self._sent  # messages acked before this read are in the end offsets it sees
        lag, committed = await self._position()
        self._window.add(self._clock(), committed)
        self._measured = lag
        self._sent_at_measure = sent_before
        self._ready.set()
        PRIMARY_DEPTH.set(self.depth)
        PRIMARY_RATE.set(self.rate)
        return self._measured

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 — keep routing on the last depth; say so
                log.warning("could not refresh primary depth (keeping %d): %r", self._measured, exc)
            await asyncio.sleep(self._refresh_s)





async def report_queues(queue: RedisQueueBook, monitors: Mapping[Path, DepthMonitor], *, every_s: float) -> None:
    """Write each path's measured depth and rate where ingest reads them for queue estimates."""
    while True:
        try:
            for path, monitor in monitors.items():
                await queue.publish(path, depth=monitor.depth, rate=monitor.rate)
        except Exception as exc:  # noqa: BLE001 — Redis away: the next report tries again
            log.warning("could not publish queue measurements: %r", exc)
        await asyncio.sleep(every_s)
