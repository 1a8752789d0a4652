"""One job, up to N attempts across the keys and providers of its path: the only retry loop.

For each attempt the generator takes the first provider of the path (in configured order,
preferring ones this job has not failed on yet) whose circuit breaker is closed, that has a
usable key, and — for a paid provider — whose cost fits the month's budget (reserved
atomically before the call, settled after, refunded on failure). Then, by what went wrong:

    RateLimitedError         cool the key (its Retry-After; the later deadline wins), try again at once
    KeyRejectedError         disable the key until an operator re-enables it, try again at once
    RetryableProviderError   count a breaker failure, back off with jitter, try again
    PermanentProviderError   fail the job now, with the provider's reason

When no candidate is left the job fails with why (every key cooling — and when the first
comes back —, every provider down, or the budget spent), retryable so a caller may resubmit.
Keys that come back soon are waited for instead: in a storm of 429s every key of a path may be
cooling for a second or two, and a job that fails for a wait that short would be a job lost to the
game (``key_wait_s``: the most a job waits in all; 0 fails at once).

Paid calls are counted per call, not per attempt: a job's calls to one provider are numbered
(``ProviderCalls``, in Redis), and the reservation is keyed ``<job>:<provider>:<seq>``. A replay
of the job (a generator killed mid-call) finds the same call and its reservation; an adapter that
can resume (``generate_resumable``: Replicate) polls the prediction already paid for and settles
the original reservation. One that cannot (a plain HTTP request) makes a new call, so the
interrupted one is settled as paid — it most likely was — and the new one reserves afresh. A call
that failed is closed (refunded) and the next attempt makes call ``seq + 1``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import Counter, Histogram

from services.common import tracing
from services.common.backoff import Backoff
from services.common.budget import Reservation
from services.common.contracts import ImageSpec
from services.common.keypool import ApiKey, NoKeyAvailable
from services.common.ports import Breaker, BudgetLedger, KeyPool, ProviderCalls, TerminalGuard
from services.common.provider_calls import PaidCall
from services.providers.port import (
    GeneratedImage,
    JobAlreadyFinished,
    KeyRejectedError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    ResumableCall,
    RetryableProviderError,
)

log = logging.getLogger(__name__)

CALL_SECONDS = Histogram("forgeline_provider_call_seconds", "Provider call latency.", ["provider", "outcome"],
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120))
ERRORS = Counter("forgeline_provider_errors_total", "Provider errors by class.", ["provider", "error"])


T = TypeVar("T")


class HttpImageProvider(Protocol):
    """An adapter for one provider's protocol; ``token`` is the key's secret (None: no auth)."""

    name: str

    async def generate(self, spec: ImageSpec, token: str | None) -> GeneratedImage: ...


@dataclass
class Candidate:
    """One provider of a path, with what it takes to call it."""

    name: str
    adapter: HttpImageProvider | Any  # an image provider here; the comparer's candidates hold VLM adapters
    breaker: Breaker
    keys: KeyPool | None = None  # None: the provider needs no key (a public Space, the procedural one)
    cost_micros: int = 0
    timeout_s: float = 60.0


class NoProviderAvailable(RetryableProviderError):
    """Every provider of the path is down, out of keys or out of budget right now."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message, provider="failover", code="no_provider_available")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Attempted(Generic[T]):
    """What a call under the failover returned, and who served it."""

    value: T
    attempts: int
    provider: str
    key_id: str | None  # the key's fingerprint ("replicate:1a2b3c4d"), never the secret


@dataclass
class _Attempt:
    candidate: Candidate
    key: ApiKey | None
    reservation: Reservation | None
    job_id: str = ""
    call: PaidCall | None = None  # the job's call to a paid provider: what the reservation is for


class _LocalCalls:
    """A job's call numbers within one run, when no ``ProviderCalls`` is shared (tests, the comparer)."""

    def __init__(self) -> None:
        self._seq: dict[str, int] = {}

    async def current(self, job_id: str, provider: str) -> PaidCall:
        return PaidCall(self._seq.get(provider, 1))

    async def close(self, job_id: str, provider: str, seq: int) -> None:
        if self._seq.get(provider, 1) == seq:
            self._seq[provider] = seq + 1


@dataclass
class Failover:
    candidates: Sequence[Candidate]
    budget: BudgetLedger | None = None
    attempts: int = 3
    backoff: Backoff = Backoff(base_s=0.5, max_s=10.0)
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    calls: ProviderCalls | None = None  # where paid calls are numbered and recorded, shared by every replica
    guard: TerminalGuard | None = None  # asked whether a resumed call's job is finished already
    key_wait_s: float = 0.0  # how long a job may wait, in all, for a cooling key to come back

    async def generate(self, job_id: str, spec: ImageSpec, *, tenant: str | None = None
                       ) -> tuple[GeneratedImage, int]:
        """The image and the number of attempts it took; raises the ``ProviderError`` that ended the job.

        ``tenant``: whose monthly budget a paid call counts against too (besides the deployment's).
        """

        async def call(candidate: Candidate, token: str | None, chosen: _Attempt) -> GeneratedImage:
            if chosen.call is not None and self._resumable(candidate):
                image = await candidate.adapter.generate_resumable(spec, token, self._resumable_call(chosen))
            else:
                image = await candidate.adapter.generate(spec, token)
            return dataclasses.replace(image, provider=candidate.name)  # "hf-space-b", not the protocol name

        result = await self._run(job_id, call, tenant)
        return result.value, result.attempts

    def _resumable(self, candidate: Candidate) -> bool:
        """Can a replay resume this candidate's call? Only with an adapter that can and calls on record."""
        return self.calls is not None and callable(getattr(candidate.adapter, "generate_resumable", None))

    def _resumable_call(self, chosen: _Attempt) -> ResumableCall:
        assert chosen.call is not None and self.calls is not None
        guard, job_id = self.guard, chosen.job_id

        async def finished() -> bool:
            return guard is not None and await guard.finished(job_id)

        return ResumableCall(job_id=job_id, provider=chosen.candidate.name, seq=chosen.call.seq,
                             call_id=chosen.call.call_id, calls=self.calls, finished=finished)

    async def run(self, job_id: str, call: Callable[[Candidate, str | None], Awaitable[T]], *,
                  tenant: str | None = None) -> Attempted[T]:
        """``call(candidate, token)`` under this loop's rules: the comparer's VLM calls use it too.

        Returns the value with who served it; raises the ``ProviderError`` that ended the job.
        """
        return await self._run(job_id, lambda candidate, token, _chosen: call(candidate, token), tenant)

    async def _run(self, job_id: str, call: Callable[[Candidate, str | None, _Attempt], Awaitable[T]],
                   tenant: str | None = None) -> Attempted[T]:
        failed_on: set[str] = set()
        last: ProviderError | None = None
        history = self.calls if self.calls is not None else _LocalCalls()
        waited = 0.0
        for attempt in range(1, self.attempts + 1):
            chosen, waited = await self._choose_waiting(job_id, history, failed_on, tenant, waited)
            try:
                value = await self._call(chosen, call)
            except JobAlreadyFinished:
                await self._close(chosen, history)
                raise
            except ProviderError as exc:
                last = exc
                await self._close(chosen, history)
                if not isinstance(exc, RateLimitedError | KeyRejectedError):
                    failed_on.add(chosen.candidate.name)  # a key's problem is not its provider's: try another key
                await self._after_failure(chosen, exc)
                if isinstance(exc, PermanentProviderError):
                    raise
                if not isinstance(exc, RateLimitedError | KeyRejectedError) and attempt < self.attempts:
                    await self.sleep(self.backoff.delay(attempt))
                continue
            await self._after_success(chosen)
            return Attempted(value, attempt, chosen.candidate.name, chosen.key.key_id if chosen.key else None)
        assert last is not None
        raise last

    async def _choose_waiting(self, job_id: str, history: ProviderCalls | _LocalCalls, failed_on: set[str],
                              tenant: str | None, waited: float) -> tuple[_Attempt, float]:
        """``_choose``, waiting for a cooling key while the job has ``key_wait_s`` left; returns the
        candidate and the job's wait so far."""
        while True:
            try:
                return await self._choose(job_id, history, failed_on, tenant), waited
            except NoProviderAvailable as exc:
                if exc.retry_after_s is None:
                    raise
                # Jobs waiting on one key do not all come back at once.
                wait = exc.retry_after_s + random.uniform(0, 0.1 + exc.retry_after_s / 4)
                if waited + wait > self.key_wait_s:
                    raise
                waited += wait
                await self.sleep(wait)

    async def _choose(self, job_id: str, history: ProviderCalls | _LocalCalls, failed_on: set[str],
                      tenant: str | None = None) -> _Attempt:
        """The first usable candidate, fresh ones first; ``NoProviderAvailable`` says why there is none."""
        reasons: list[str] = []
        retry_after: list[float] = []
        ordered = sorted(self.candidates, key=lambda c: c.name in failed_on)  # stable: config order otherwise
        for candidate in ordered:
            if not await candidate.breaker.allows():
                reasons.append(f"{candidate.name} is down (circuit open)")
                continue
            key = None
            if candidate.keys is not None:
                try:
                    key = await candidate.keys.pick()
                except NoKeyAvailable as exc:
                    reasons.append(str(exc))
                    if exc.retry_after_s is not None:
                        retry_after.append(exc.retry_after_s)
                    continue
            reservation, call = None, None
            if candidate.cost_micros and self.budget is not None:
                call, reservation = await self._reserve(job_id, candidate, history, tenant)
                if reservation is None:
                    whose = f" (the deployment's or tenant {tenant!r}'s)" if tenant else ""
                    reasons.append(f"{candidate.name} would exceed the monthly budget{whose}")
                    continue
            return _Attempt(candidate, key, reservation, job_id, call)
        first_back = min(retry_after) if retry_after else None
        when = f"; the first key is back in {first_back:.0f} s" if first_back is not None else ""
        raise NoProviderAvailable("no provider can take the job: " + "; ".join(reasons) + when,
                                  retry_after_s=first_back)

    async def _reserve(self, job_id: str, candidate: Candidate, history: ProviderCalls | _LocalCalls,
                       tenant: str | None = None) -> tuple[PaidCall, Reservation | None]:
        """The job's current call to ``candidate`` and its reservation (the same one on a replay)."""
        assert self.budget is not None
        call = await history.current(job_id, candidate.name)
        reservation = await self.budget.reserve(f"{job_id}:{candidate.name}:{call.seq}", candidate.cost_micros,
                                                tenant=tenant)
        if reservation is None or not reservation.replayed or self._resumable(candidate):
            return call, reservation
        # A replay of a call that cannot be resumed: the interrupted one was most likely paid for.
        if reservation.state == "reserved":
            await self.budget.settle(reservation)
        await history.close(job_id, candidate.name, call.seq)
        call = await history.current(job_id, candidate.name)
        return call, await self.budget.reserve(f"{job_id}:{candidate.name}:{call.seq}", candidate.cost_micros,
                                               tenant=tenant)

    async def _close(self, chosen: _Attempt, history: ProviderCalls | _LocalCalls) -> None:
        """The call ended without an image: refund it, and let the next attempt make a new one."""
        if chosen.reservation is not None and self.budget is not None:
            await self.budget.refund(chosen.reservation)
        if chosen.call is not None:
            await history.close(chosen.job_id, chosen.candidate.name, chosen.call.seq)

    async def _call(self, chosen: _Attempt, call: Callable[[Candidate, str | None, _Attempt], Awaitable[T]]) -> T:
        candidate = chosen.candidate
        token = chosen.key.get_secret_value() if chosen.key is not None else None
        started = asyncio.get_running_loop().time()
        outcome = "ok"
        try:
            async with asyncio.timeout(candidate.timeout_s):
                with tracing.span(f"provider {candidate.name}", **{"forgeline.provider": candidate.name}):
                    return await call(candidate, token, chosen)
        except TimeoutError:
            outcome = "timeout"
            raise RetryableProviderError(f"no image within {candidate.timeout_s:.0f} s", provider=candidate.name,
                                         code="timeout") from None
        except ProviderError as exc:
            outcome = type(exc).__name__
            exc.provider = candidate.name  # "hf-space-b", as on a success: one name in results and errors
            raise
        finally:
            CALL_SECONDS.labels(candidate.name, outcome).observe(asyncio.get_running_loop().time() - started)

    async def _after_failure(self, chosen: _Attempt, exc: ProviderError) -> None:
        candidate, key = chosen.candidate, chosen.key
        ERRORS.labels(candidate.name, type(exc).__name__).inc()
        log.warning("%s failed: %s", candidate.name, exc)  # ProviderError messages never carry keys
        if key is not None and candidate.keys is not None:
            if isinstance(exc, RateLimitedError):
                await candidate.keys.cooldown(key, exc.retry_after_s, reason=exc.code)
            elif isinstance(exc, KeyRejectedError):
                await candidate.keys.disable(key, reason=f"{exc.code}: {exc.message}"[:200])
            else:
                await candidate.keys.record(key, ok=False)
        if not isinstance(exc, RateLimitedError | KeyRejectedError | PermanentProviderError):
            await candidate.breaker.failure()

    async def _after_success(self, chosen: _Attempt) -> None:
        if chosen.reservation is not None and self.budget is not None:
            await self.budget.settle(chosen.reservation)
        if chosen.key is not None and chosen.candidate.keys is not None:
            await chosen.candidate.keys.record(chosen.key, ok=True)
        await chosen.candidate.breaker.success()
