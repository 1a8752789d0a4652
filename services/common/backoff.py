"""Exponential backoff with jitter, and waiting out a dependency that is not there yet.

Every retry in Forgeline waits ``Backoff.delay(attempt)``: ``base_s · 2^(attempt-1)``, capped at
``max_s``, times a random factor in [0.5, 1] so replicas do not retry in lockstep.

:func:`until_ready` is for start-up: a broker whose coordinator is still being elected, a Redis
still loading its AOF. It retries for as long as it takes (or until ``stop``), logging the first
failure and then at most one line per ``log_every_s``, so an outage of minutes leaves a few
lines, not millions.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.2
    max_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        return min(self.max_s, self.base_s * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.0)


class RateLimitedLog:
    """Logs a repeated warning at most once per ``every_s``, counting what it held back."""

    def __init__(self, logger: logging.Logger, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._every_s = every_s
        self._clock = clock
        self._last: float | None = None
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._every_s:
            self._held += 1
            return
        if self._held:
            message += f" ({self._held} similar message(s) held back)"
        self._log.warning(message, *args)
        self._last, self._held = now, 0


class RepeatFilter(logging.Filter):
    """Lets each distinct message of the named loggers through at most once per ``every_s``.

    A broker that is down for minutes makes aiokafka log a reconnect line per attempt, per
    connection (millions of lines an hour). Installed on a handler, this keeps one line per
    message template per interval, and says how many it held back when it lets the next through.
    """

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka",), every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._every_s = every_s
        self._clock = clock
        self._seen: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, record.msg)
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._every_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} ({last[1]} similar message(s) held back)"
        if len(self._seen) > 1000:  # templates, not values: this stays small; bound it anyway
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


async def until_ready(operation: Callable[[], Awaitable[T]], *, what: str, logger: logging.Logger,
                      retry_on: tuple[type[BaseException], ...] = (Exception,),
                      backoff: Backoff = Backoff(base_s=0.2, max_s=5.0), log_every_s: float = 30.0) -> T:
    """``await operation()`` until it succeeds, backing off between tries; errors outside
    ``retry_on`` propagate at once. Cancel the caller to give up."""
    warn = RateLimitedLog(logger, log_every_s)
    attempt = 0
    while True:
        attempt += 1
        try:
            result = await operation()
        except retry_on as exc:
            warn.warning("%s: not ready yet (attempt %d): %r; retrying", what, attempt, exc)
            await asyncio.sleep(backoff.delay(attempt))
            continue
        if attempt > 1:
            logger.info("%s: ready after %d attempt(s)", what, attempt)
        return result
