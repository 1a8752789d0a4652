"""The primary path's queue depth, refreshed in the background (never one admin call per message)."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import Gauge

from services.common.lag import group_lag

log = logging.getLogger(__name__)

PRIMARY_DEPTH = Gauge("forgeline_router_primary_depth", "Primary path queue depth as the router sees it.")


class DepthMonitor:
    """Measured lag of the primary generators, plus what this router sent since the measurement.

    Between two measurements a burst of requests would all see the same stale depth; counting
    the jobs this router routed to primary since the last measurement began closes that gap.
    """

    def __init__(
        self, admin: AIOKafkaAdminClient, offsets: AIOKafkaConsumer, *, topic: str, group_id: str, refresh_s: float
    ) -> None:
        self._admin = admin
        self._offsets = offsets
        self._topic = topic
        self._group_id = group_id
        self._refresh_s = refresh_s
        self._measured = 0
        self._sent = 0
        self._sent_at_measure = 0
        self._ready = asyncio.Event()

    @property
    def depth(self) -> int:
        return self._measured + (self._sent - self._sent_at_measure)

    def routed_to_primary(self) -> None:
        self._sent += 1

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def refresh(self) -> int:
        sent_before = self._sent  # messages acked before this read are in the end offsets it sees
        lag = await group_lag(self._admin, self._offsets, self._topic, self._group_id)
        self._measured = sum(lag.values())
        self._sent_at_measure = sent_before
        self._ready.set()
        PRIMARY_DEPTH.set(self.depth)
        return self._measured

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001 — keep routing on the last depth; say so
                log.warning("could not refresh primary depth (keeping %d): %r", self._measured, exc)
            await asyncio.sleep(self._refresh_s)
