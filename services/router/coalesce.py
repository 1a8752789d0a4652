"""Ending the jobs that waited on an identical job's provider call, and taking over dead leases.

``FanOut`` consumes the terminal topics (its own consumer group, ``<prefix>.router.coalesce``).
For each terminal event of a job that led a group (one Redis ``GET`` tells; any other event
costs nothing more) it ends the group's followers:

* **completed** with a real image: each follower gets its own ``GenerationCompleted`` with the
  leader's image, ``coalesced_with`` naming the leader;
* **failed for good** (``retryable`` false: the provider refused this prompt, the image was
  invalid): each follower fails with the same error, as its own call would have;
* **failed retryably, cancelled, or a placeholder**: the followers are routed again, one of
  them as the new leader and the others waiting on it. A client's cancel ends only its own
  job, a passing outage gets a fresh try, and a stand-in is never what a follower asked for.

Every follower's terminal event goes through the terminal guard, so a follower cancelled while
it waited keeps its one ``canceled`` event, and a replayed fan-out publishes nothing twice.

``LeaseSweeper`` visits every group once a second. A leader past its deadline that is still
queued (durable in Kafka) or being stored gets its lease renewed; one whose generator stopped
renewing it (killed mid-call) loses it to its first follower, whose request goes back to the
router, and the old leader waits in its place.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from services.common.coalescing import RedisCoalescer
from services.common.consumer import Outcome
from services.common.contracts import GenerationCompleted, GenerationFailed, GenerationRequested
from services.common.jobs import merge_outcomes, terminal_outcome
from services.common.kafka import send_event
from services.common.ports import JobStore, TerminalGuard
from services.common.topics import Topics
from services.router.handlers import RouterHandler

log = logging.getLogger(__name__)

FOLLOWERS_ENDED = Counter("forgeline_coalesced_followers_total",
                          "Jobs that waited on an identical job, by how they ended (completed, failed, rerouted).",
                          ["outcome"])
TAKEOVERS = Counter("forgeline_coalescing_takeovers_total", "Leases taken from a leader that stopped renewing.")

#: A leader in one of these states is alive: it waits in a durable queue, or its image is being stored.
#: An ended leader whose group outlived its lease lost its fan-out: a follower takes over (and finds
#: the image in the result cache, if there is one).
_ALIVE = frozenset({"queued", "routed", "stored"})


@dataclass
class FanOut:
    """Terminal event of a leader → the terminal events (or new routes) of its followers."""

    coalescer: RedisCoalescer
    router: RouterHandler
    topics: Topics
    jobs: JobStore
    guard: TerminalGuard

    async def handle(self, event: GenerationCompleted | GenerationFailed) -> Outcome:
        key = await self.coalescer.led(event.job_id)
        if key is None:
            return Outcome()
        shareable = isinstance(event, GenerationCompleted) and not event.placeholder
        followers = await self.coalescer.close(key, event.job_id, shareable=shareable)
        outcomes = [await self._end(event, follower) for follower in followers]

        async def forget() -> None:
            await self.coalescer.closed(key, event.job_id)

        return merge_outcomes(*outcomes, Outcome(on_acked=forget))

    async def _end(self, leader: GenerationCompleted | GenerationFailed, follower: GenerationRequested) -> Outcome:
        if isinstance(leader, GenerationCompleted) and not leader.placeholder:
            FOLLOWERS_ENDED.labels("completed").inc()
            return await terminal_outcome(GenerationCompleted.from_leader(leader, follower), guard=self.guard,
                                          topic=self.topics.name("generation.completed"), jobs=self.jobs)
        if isinstance(leader, GenerationFailed) and not (leader.canceled or leader.error.retryable):
            FOLLOWERS_ENDED.labels("failed").inc()
            return await terminal_outcome(GenerationFailed.from_leader(leader, follower), guard=self.guard,
                                          topic=self.topics.name("generation.failed"), jobs=self.jobs)
        FOLLOWERS_ENDED.labels("rerouted").inc()
        return await self.router.handle(follower, parked=True)


@dataclass
class LeaseSweeper:
    """Renews the leases of leaders that wait, and hands those of dead leaders to a follower."""

    coalescer: RedisCoalescer
    jobs: JobStore
    producer: AIOKafkaProducer
    topics: Topics
    every_s: float = 1.0

    async def run(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 — Redis or Kafka away: the next sweep tries again
                log.warning("coalescing sweep failed: %r", exc)
            await asyncio.sleep(self.every_s)

    async def sweep(self) -> int:
        """One visit of every group; returns the leases taken over."""
        taken = 0
        for group in await self.coalescer.groups():
            if group.leader is None and group.waiting == 0:
                await self.coalescer.forget_if_empty(group.key)
            elif group.expired and await self._alive(group.leader):
                await self.coalescer.extend(group.key, group.leader)  # type: ignore[arg-type]
            elif group.expired:
                taken += await self._take_over(group.key, group.leader)
        return taken

    async def _alive(self, leader: str | None) -> bool:
        view = await self.jobs.get(leader) if leader is not None else None
        return view is not None and view.status in _ALIVE

    async def _take_over(self, key: str, leader: str | None) -> int:
        promoted = await self.coalescer.take_over(key, leader)
        if promoted is None:
            return 0
        TAKEOVERS.inc()
        log.warning("job %s stopped renewing its coalescing lease; job %s leads its group now", leader, promoted.job_id)
        if leader is not None:
            await self.jobs.update(leader, "generating", coalesced_with=promoted.job_id)
        # Back through the router: it finds the promoted job leading and routes it.
        await send_event(self.producer, self.topics.name("generation.requested"), promoted)
        return 1
