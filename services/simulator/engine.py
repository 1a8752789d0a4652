"""The discrete-event simulation: a simulated clock, the router's own decision code, modelled providers.

Each request is decided by :func:`services.router.policy.route` — the function the router's
handler calls — with the inputs the router has: the depth and measured rate of a real
:class:`~services.router.depth.DepthMonitor` (refreshed every ``refresh_s`` of simulated time, its
``(lag, committed)`` read from the model instead of Kafka) and a real
:class:`~services.router.budget_gate.BudgetGate` on a ledger that counts the simulated spend.
Nothing sleeps: events are taken from a heap in time order, and every await completes at once.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.common.budget import BudgetSnapshot, TenantSpend, usd
from services.common.contracts import GenerationRequested, ImageSpec
from services.router.budget_gate import BudgetGate
from services.router.depth import DepthMonitor
from services.router.policy import RoutingPolicy, UnlimitedPaidCapacity, route
from services.simulator.scenario import Arrival, Paid, Scenario

#: Builds a fresh policy for one run (policies keep state, e.g. the hysteresis band).
PolicyFactory = Callable[[], RoutingPolicy]


@dataclass
class Job:
    arrival: Arrival
    #: Drawn once per job, so every policy meets the same providers' luck for the same request.
    service_s: float
    paid_s: float
    path: str = ""  # "cache", "primary", "fallback" or "placeholder"
    started: float | None = None
    done: float | None = None


class PrimaryQueue(Protocol):
    """The free path's waiting jobs, in the order the Spaces take them."""

    def append(self, job: Job) -> None: ...
    def appendleft(self, job: Job) -> None: ...
    def popleft(self) -> Job: ...
    def __len__(self) -> int: ...

    def ahead_of(self, arrival: Arrival) -> int:
        """Jobs waiting that a new request like ``arrival`` would be served after."""


class FifoQueue:
    """Today's primary topic: one queue, first come first served."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()

    def append(self, job: Job) -> None:
        self._jobs.append(job)

    def appendleft(self, job: Job) -> None:
        self._jobs.appendleft(job)

    def popleft(self) -> Job:
        return self._jobs.popleft()

    def __len__(self) -> int:
        return len(self._jobs)

    def ahead_of(self, arrival: Arrival) -> int:
        return len(self._jobs)


#: Deadlines up to this go first on a prioritised primary (the built-in day's crafting screens and purchases).
URGENT_DEADLINE_S = 120.0


def lane(arrival: Arrival) -> int:
    """A request's lane on a prioritised primary: 0 urgent (deadline <= 120 s), 1 other deadlines, 2 none."""
    if arrival.deadline_s is None:
        return 2
    return 0 if arrival.deadline_s <= URGENT_DEADLINE_S else 1



class LaneQueue:
    """A primary with priority lanes (not built in the pipeline): urgent, then other deadlines, then none.

    Each lane is first come first served; a Space takes from the most urgent lane that has a job.
    What a request waits for is the jobs in its own lane and the more urgent ones: that count is
    the "depth" the router's policy is given, as a router reading one topic per lane would.
    """

    def __init__(self) -> None:
        self._lanes: tuple[deque[Job], ...] = (deque(), deque(), deque())

    def append(self, job: Job) -> None:
        self._lanes[lane(job.arrival)].append(job)

    def appendleft(self, job: Job) -> None:
        self._lanes[lane(job.arrival)].appendleft(job)

    def popleft(self) -> Job:
        return next(jobs for jobs in self._lanes if jobs).popleft()

    def __len__(self) -> int:
        return sum(len(jobs) for jobs in self._lanes)

    def ahead_of(self, arrival: Arrival) -> int:
        return sum(len(jobs) for jobs in self._lanes[: lane(arrival) + 1])


class SimulatedLedger:
    """The ``BudgetLedger`` reads the gate makes, over the simulated spend (no Redis)."""

    def __init__(self, cap_micros: int) -> None:
        self.cap_micros = cap_micros
        self.spent_micros = 0

    async def snapshot(self, month: str | None = None) -> BudgetSnapshot:
        return BudgetSnapshot(month="simulated", cap_micros=self.cap_micros, spent_micros=self.spent_micros,
                              reserved_micros=0)

    async def snapshot_with_tenant(self, tenant: str) -> tuple[BudgetSnapshot, TenantSpend]:
        """The simulated day has one tenant, with no budget of its own."""
        return await self.snapshot(), TenantSpend(tenant, 0, 0, None)


@dataclass
class _Space:
    busy: Job | None = None
    down_until: float = 0.0
    idle_since: float = 0.0
    finish_token: int = 0


@dataclass
class RunLog:
    """What one run produced: every job, and the primary depth peak the router saw."""

    jobs: list[Job]
    duration_s: float
    spent_usd: float
    peak_depth: int = 0


class _Simulation:
    def __init__(self, arrivals: list[Arrival], scenario: Scenario, factory: PolicyFactory, seed: int) -> None:
        self.scenario = scenario
        self.rng = random.Random(seed)  # outages and cold starts
        self.now = 0.0
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = itertools.count()
        luck, paid = random.Random(seed + 1), scenario.paid
        self.jobs = [Job(arrival, luck.uniform(*scenario.spaces.service_s), _paid_latency(luck, paid))
                     for arrival in arrivals]
        self.queue: PrimaryQueue = LaneQueue() if scenario.primary_order == "lanes" else FifoQueue()
        self.spaces = [_Space() for _ in range(scenario.spaces.count)]
        self.routed_primary = 0
        self.completed_primary = 0
        self.cache: dict[str, float] = {}
        self.policy = factory()
        self.monitor = DepthMonitor(self._position, refresh_s=scenario.refresh_s,
                                    rate_window_s=scenario.rate_window_s, clock=lambda: self.now)
        price = usd(scenario.paid.price_usd)
        self.price_micros = price
        # A prorated cap is rarely a whole number of micro-dollars; the ledger counts in those.
        self.ledger = SimulatedLedger(round(scenario.cap_usd * 1_000_000) if scenario.cap_usd is not None else 0)
        self.gate = BudgetGate(self.ledger, cheapest_cost_micros=price) if scenario.cap_usd is not None \
            else UnlimitedPaidCapacity()
        self.peak_depth = 0
        self.seq_job = 0

    async def _position(self) -> tuple[int, int]:
        # The primary group's lag counts every routed job not yet completed (in service included).
        return self.routed_primary - self.completed_primary, self.completed_primary

    def _push(self, at: float, kind: str, payload: object = None) -> None:
        heapq.heappush(self.events, (at, next(self.seq), kind, payload))

    async def run(self) -> RunLog:
        for job in self.jobs:
            self._push(job.arrival.at, "arrival", job)
        end = self.jobs[-1].arrival.at if self.jobs else 0.0
        self._schedule_outages(end)
        next_refresh = 0.0
        while self.events:
            at, _, kind, payload = heapq.heappop(self.events)
            while next_refresh <= at:  # the router's background refresh, at its own pace
                self.now = next_refresh
                await self.monitor.refresh()
                next_refresh += self.scenario.refresh_s
            self.now = at
            await getattr(self, f"_on_{kind}")(payload)
        spent = self.ledger.spent_micros / 1_000_000
        return RunLog(self.jobs, max(end, 1.0), spent, self.peak_depth)

    def _schedule_outages(self, end: float) -> None:
        spaces = self.scenario.spaces
        for index in range(len(self.spaces)):
            count = _poisson(self.rng, spaces.outages_per_day * end / 86_400)
            for _ in range(count):
                start = self.rng.uniform(0, end)
                self._push(start, "outage", (index, start + self.rng.uniform(*spaces.outage_s)))

    async def _on_arrival(self, job: Job) -> None:
        arrival = job.arrival
        self.seq_job += 1
        cached_at = self.cache.get(arrival.prompt_hash)
        if cached_at is not None and self.now - cached_at <= self.scenario.cache_ttl_s:
            job.path, job.started, job.done = "cache", self.now, self.now
            return
        request = GenerationRequested(
            job_id=f"simulated-{self.seq_job}", tenant="simulated", spec=ImageSpec(prompt=arrival.prompt_hash),
            priority=arrival.priority, deadline_s=arrival.deadline_s, allow_placeholder=arrival.allow_placeholder)
        depth = self.monitor.depth if self.scenario.primary_order == "fifo" else self._lane_depth(arrival)
        self.peak_depth = max(self.peak_depth, depth)
        decision = await route(request, depth, self.policy, self.gate, rate=self.monitor.rate)
        if decision.placeholder:
            job.path, job.started = "placeholder", self.now
            self._push(self.now + self.scenario.paid.placeholder_s, "paid_done", job)
        elif decision.path == "fallback":
            job.path, job.started = "fallback", self.now
            self.ledger.spent_micros += self.price_micros
            self._push(self.now + job.paid_s, "paid_done", job)
        else:
            job.path = "primary"
            self.routed_primary += 1
            self.monitor.routed_to_primary()
            self.queue.append(job)
            self._dispatch()

    def _lane_depth(self, arrival: Arrival) -> int:
        """Jobs ahead of ``arrival`` in its lane and the more urgent ones, those in service included (as lag counts them)."""
        return self.queue.ahead_of(arrival) + sum(space.busy is not None for space in self.spaces)

    async def _on_paid_done(self, job: Job) -> None:
        job.done = self.now
        if job.path == "fallback":
            self.cache.setdefault(job.arrival.prompt_hash, self.now)

    async def _on_space_done(self, payload: object) -> None:
        index, token = payload  # type: ignore[misc]
        space = self.spaces[index]
        if space.finish_token != token or space.busy is None:
            return  # the Space went down mid-image; that image went back to the queue
        job, space.busy, space.idle_since = space.busy, None, self.now
        job.done = self.now
        self.completed_primary += 1
        self.cache[job.arrival.prompt_hash] = self.now
        self._dispatch()

    async def _on_outage(self, payload: object) -> None:
        index, until = payload  # type: ignore[misc]
        space = self.spaces[index]
        space.down_until = max(space.down_until, until)
        if space.busy is not None:  # the image in progress is lost; the generator retries it first
            self.queue.appendleft(space.busy)
            space.busy, space.finish_token = None, space.finish_token + 1
        space.idle_since = until
        self._push(until, "recovered", index)

    async def _on_recovered(self, index: object) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        spaces = self.scenario.spaces
        for index, space in enumerate(self.spaces):
            if not self.queue:
                return
            if space.busy is not None or space.down_until > self.now:
                continue
            job = self.queue.popleft()
            if job.started is None:
                job.started = self.now
            service = job.service_s
            if self.now - space.idle_since >= spaces.sleep_after_s:
                service += self.rng.uniform(*spaces.cold_start_s)
            space.busy = job
            space.finish_token += 1
            self._push(self.now + service, "space_done", (index, space.finish_token))


def _paid_latency(rng: random.Random, paid: Paid) -> float:
    latency = rng.lognormvariate(math.log(paid.median_s), paid.sigma)
    return latency + paid.cold_s if rng.random() < paid.cold_share else latency


def _poisson(rng: random.Random, mean: float) -> int:
    count, total = 0, rng.expovariate(1.0) if mean > 0 else math.inf
    while total < mean:
        count += 1
        total += rng.expovariate(1.0)
    return count


def simulate(arrivals: list[Arrival], scenario: Scenario, factory: PolicyFactory, *, seed: int = 1) -> RunLog:
    """Run ``arrivals`` through one policy; the same ``seed`` gives every policy the same providers' luck."""
    return asyncio.run(_Simulation(arrivals, scenario, factory, seed).run())
