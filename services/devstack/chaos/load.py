"""The game backend of a chaos run: N distinct jobs over HTTP at a steady rate, retried as a client would.

Each request has its own ``Idempotency-Key`` and a prompt that names it (``chaos <run> relic <i>``),
so every effect downstream — a job, a provider's charge, a ledger entry — can be traced back to
the one client request that caused it. 5xx answers and connection errors are retried with the same
key and full-jitter backoff until ``give_up_s``; any other 4xx is final.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import re
import time
from dataclasses import dataclass, field

import httpx
from PIL import Image

#: Every ``REFERENCE_EVERY``-th job carries a reference image, so the comparer has work too.
REFERENCE_EVERY = 10
SIZE = 128
#: HTTP connections of the game backend to ingest (and requests in flight).
CONNECTIONS = 64


@dataclass
class Submission:
    """One client request and what the API answered it, over all its retries."""

    index: int
    key: str
    job_ids: set[str] = field(default_factory=set)
    statuses: list[int | str] = field(default_factory=list)  # HTTP status, or the transport error's name
    accepted_at: float | None = None  # monotonic time of the first 200/202
    final: str = "pending"  # accepted | rejected | gave_up


def prompt_for(run_id: str, index: int) -> str:
    return f"chaos {run_id} relic {index}"


def index_of(run_id: str, prompt: str) -> int | None:
    """The request a prompt (as a provider received it) belongs to, or None for another run's."""
    found = re.search(rf"chaos {re.escape(run_id)} relic (\d+)", prompt)
    return int(found[1]) if found else None


def reference_image(index: int) -> str:
    """A small PNG data URL, a different colour per job."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(run_id: str, index: int) -> dict:
    body = {"prompt": prompt_for(run_id, index), "width": SIZE, "height": SIZE, "seed": index,
            "metadata": {"chaos_request": str(index)}}
    if index % REFERENCE_EVERY == REFERENCE_EVERY - 1:
        body["reference_image"] = reference_image(index)
    return body


class Load:
    """Submits ``n`` jobs to ``url`` at ``rate`` per second; ``submissions`` fills in as they go."""

    def __init__(self, url: str, run_id: str, n: int, rate: float, *, seed: int, give_up_s: float = 300.0) -> None:
        self.url, self.run_id, self.n, self.rate = url, run_id, n, rate
        self.give_up_s = give_up_s
        self.submissions = [Submission(i, f"chaos-{run_id}-{i}") for i in range(n)]
        self._random = random.Random(seed)
        # Requests wait for a connection here, not in httpcore's pool: with a few thousand queued there
        # (ingest down for a while, every client retrying) each pool event walks the whole queue, and
        # the load generator spent its time in the pool instead of sending (encode/httpcore#822, httpx#3215).
        self._slots = asyncio.Semaphore(CONNECTIONS)

    def accepted(self) -> dict[str, Submission]:
        """Every job id the API answered with → its request."""
        return {job: s for s in self.submissions for job in s.job_ids}

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS // 2)
        async with httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(10.0), limits=limits) as http:
            began = time.monotonic()
            tasks = []
            for submission in self.submissions:
                delay = began + submission.index / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._submit(http, submission)))
            await asyncio.gather(*tasks)

    async def _submit(self, http: httpx.AsyncClient, submission: Submission) -> None:
        body = request_body(self.run_id, submission.index)
        deadline = time.monotonic() + self.give_up_s
        pause = 0.25
        while True:
            try:
                async with self._slots:
                    response = await http.post("/v1/generations", json=body,
                                               headers={"Idempotency-Key": submission.key})
                submission.statuses.append(response.status_code)
                if response.status_code in (200, 202):
                    submission.job_ids.add(response.json()["job_id"])
                    submission.accepted_at = submission.accepted_at or time.monotonic()
                    submission.final = "accepted"
                    return
                if response.status_code < 500 and response.status_code != 429:
                    submission.final = "rejected"
                    return
            except httpx.TransportError as exc:
                submission.statuses.append(type(exc).__name__)
            if time.monotonic() + pause > deadline:
                submission.final = "gave_up"
                return
            await asyncio.sleep(self._random.uniform(0, pause))  # full jitter: retries do not arrive in waves
            pause = min(pause * 2, 5.0)
