"""What the ingest API decides: idempotency, the result cache, queueing, reading and watching jobs.

Routes stay thin: they parse HTTP, call one function here, and map its result or exception
to a response. Nothing here knows about HTTP status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.errors import KafkaError
from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError

from services.common.contracts import (
    Event,
    GenerationCompleted,
    GenerationRequested,
    HttpsImage,
    JobId,
    new_job_id,
    utcnow,
)
from services.common.jobs import TERMINAL, JobStatus, JobView
from services.common.kafka import send_event
from services.common.topics import TopicKey
from services.ingest.api_models import GenerationRequestBody, contract_errors
from services.ingest.deps import IngestDeps
from services.ingest.errors import (
    IdempotencyKeyReused,
    InvalidRequest,
    JobNotFound,
    Unavailable,
    describe,
)
from services.ingest.images import checked_image
from services.ingest.limits import take_slot
from services.ingest.webhook_checks import check_job_webhook

log = logging.getLogger(__name__)

JOBS = Counter("forgeline_ingest_jobs_total", "Generation requests by outcome.", ["outcome"])

_JOB_ID: TypeAdapter[str] = TypeAdapter(JobId)

# Delete the idempotency key only if it still names our job (a compare-and-delete).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# --------------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class SubmitResult:
    """What became of a POST: a new queued job, a cache hit, or the job of an earlier identical request."""

    job_id: str
    status: JobStatus
    outcome: Literal["queued", "cached", "replayed", "unconfirmed"]  # unconfirmed: only inside submit()
    completed: GenerationCompleted | None = None  # the cached result, for "cached"
    view: JobView | None = None  # the job as it is now, for "replayed" (None: its first request is still writing it)
    metadata: dict[str, str] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


# --------------------------------------------------------------------------------- submit


async def submit(
    body: GenerationRequestBody, tenant: str, idempotency_key: str | None, deps: IngestDeps
) -> SubmitResult:
    """Accept one generation request. Raises ``InvalidRequest`` or ``Unavailable``."""
    request = build_request(body, tenant, idempotency_key)
    await check_job_webhook(request, deps)
    if isinstance(request.reference_image, str):
        checked = await checked_image(request.reference_image, field="reference_image", deps=deps)
        # Stored: the message carries the claim check; an https URL travels as it came.
        reference = checked.url if isinstance(checked, HttpsImage) else checked
        request = request.model_copy(update={"reference_image": reference})
    if idempotency_key is None:
        return await serve_or_queue(request, deps)

    claim = _Claim(
        key=deps.keys.key("idem", tenant, hashlib.sha256(idempotency_key.encode()).hexdigest()),
        value=_claim_value(request.job_id, body, state="pending"),
    )
    earlier = await _claim_idempotency_key(claim, deps)
    if earlier is not None and earlier.outcome == "unconfirmed":
        # The first try's record was not acknowledged; it may or may not be on the topic. Send it
        # again under the same job id: one job whatever happened (a copy that did arrive is routed
        # once the job is terminal, never twice to completion: the terminal guard sees to that).
        await publish_or_fail(request.model_copy(update={"job_id": earlier.job_id}), "generation.requested", deps,
                              what="job", outcomes=JOBS, keep_queued=True)
        with contextlib.suppress(Exception):
            await deps.redis.set(claim.key, _claim_value(earlier.job_id, body), xx=True, keepttl=True)
        JOBS.labels("queued").inc()
        return SubmitResult(earlier.job_id, "queued", "queued")
    if earlier is not None:
        JOBS.labels("replayed").inc()
        return earlier
    try:
        result = await serve_or_queue(request, deps, keep_queued=True)
    except _Unconfirmed:
        # Kafka did not acknowledge the record in time, but it may have taken it: keep the key,
        # so the client's retry with it re-sends this job instead of making a second one.
        await deps.redis.set(claim.key, _claim_value(request.job_id, body, state="unconfirmed"), xx=True,
                             keepttl=True)
        raise
    except BaseException:
        # The job was not queued: free the key, so the client's retry with it makes a job
        # instead of replaying one that never ran. Best effort: Redis may be what failed.
        with contextlib.suppress(Exception):
            await deps.redis.eval(_RELEASE, 1, claim.key, claim.value)
        raise
    # Published (or answered from the cache): a retry with the key replays this job. If Redis
    # fails just now the claim stays pending, and a retry re-sends the job: a copy, never a loss.
    with contextlib.suppress(Exception):
        await deps.redis.set(claim.key, _claim_value(request.job_id, body), xx=True, keepttl=True)
    return result


ClaimState = Literal["pending", "unconfirmed", "published"]


def _claim_value(job_id: str, body: GenerationRequestBody, *, state: ClaimState = "published") -> str:
    """What an Idempotency-Key holds: the job, the body it was made from, and whether its request
    record is known to be on Kafka (``published``), being sent (``pending``) or not acknowledged."""
    value = {"job_id": job_id, "body": body.fingerprint()}
    if state == "pending":
        value |= {"state": state, "at": round(time.time(), 3)}  # when it began: a claim left by a dead request ages out
    elif state == "unconfirmed":
        value |= {"state": state}
    return json.dumps(value)


async def serve_or_queue(request: GenerationRequested, deps: IngestDeps, *, keep_queued: bool = False,
                         cache_key: str | None = None) -> SubmitResult:
    """A cache hit, or the job queued: ``submit`` once the request's images, webhook and Idempotency-Key
    are dealt with (``fastpath`` calls it straight for a request with none of them, with the request's
    ``cache_key`` it has already computed)."""
    # A request that wants a comparison must run: a cached image carries no comparison for this target.
    if request.reference_image is None:
        cached = await deps.cache.get(cache_key or deps.cache_scope.key(request.spec, request.tenant))
        if cached is not None:
            await _complete_from_cache(request, cached, deps)
            JOBS.labels("cached").inc()
            return SubmitResult(request.job_id, "completed", "cached", completed=cached, metadata=request.metadata)

    await take_slot(request.tenant, request.job_id, deps)
    # Status before the event: a client polling right after the 202 must find the job, with
    # the tenant that GET checks (the router's update may land first and does not carry it all).
    await deps.jobs.update(request.job_id, "queued", tenant=request.tenant,
                           timings=request.timings.model_dump(mode="json", exclude_none=True))
    await publish_or_fail(request, "generation.requested", deps, what="job", outcomes=JOBS, keep_queued=keep_queued)
    JOBS.labels("queued").inc()
    return SubmitResult(request.job_id, "queued", "queued")


def build_request(body: GenerationRequestBody, tenant: str, idempotency_key: str | None) -> GenerationRequested:
    """The contract's request for ``body``, with a new job id; raises ``InvalidRequest``."""
    try:
        return GenerationRequested.model_validate({
            "job_id": new_job_id(),
            "tenant": tenant,
            "spec": body.spec_fields(),
            **body.job_fields(),
            "idempotency_key": idempotency_key,
            "timings": {"accepted_at": utcnow()},
        })
    except ValidationError as exc:
        raise InvalidRequest(contract_errors(exc)) from None


@dataclass(frozen=True)
class _Claim:
    """An Idempotency-Key's Redis key, and the value that says "this job, made from this body"."""

    key: str
    value: str


async def _claim_idempotency_key(claim: _Claim, deps: IngestDeps) -> SubmitResult | None:
    """None when this request owns the key now; else the earlier request's job."""
    ttl = deps.settings.status_ttl_s
    raw: bytes | None = None
    for _ in range(2):  # a second round only when the key expired between SET NX and GET
        if await deps.redis.set(claim.key, claim.value, nx=True, ex=ttl):
            return None
        raw = await deps.redis.get(claim.key)
        if raw is not None:
            break
    if raw is None:
        raise Unavailable("redis", "the Idempotency-Key changed hands twice in a row; retry the request")
    earlier, ours = json.loads(raw), json.loads(claim.value)
    if earlier["body"] != ours["body"]:
        raise IdempotencyKeyReused()
    if earlier.get("state") == "pending":
        earlier = await _settled_claim(claim.key, earlier, deps)
    view = await deps.jobs.get(earlier["job_id"])
    # No view yet: the first request claimed the key and is writing the job right now.
    status: JobStatus = view.status if view is not None else "queued"
    if status == "queued" and earlier.get("state") in ("pending", "unconfirmed"):
        # Its first request's record was not acknowledged (a 503), or that request died before it
        # knew (ingest killed): the record may never have reached Kafka. Re-send it under the same
        # job id; the router drops a copy of a job it already routed.
        return SubmitResult(earlier["job_id"], status, "unconfirmed", view=view)
    return SubmitResult(earlier["job_id"], status, "replayed", view=view)


#: How long a retry waits for a concurrent first request with its key to finish queueing.
_CONCURRENT_WAIT_S = 1.0


async def _settled_claim(key: str, claim: dict[str, Any], deps: IngestDeps) -> dict[str, Any]:
    """The claim of a first request that may still be sending its record.

    A concurrent duplicate waits briefly for it (it takes milliseconds when Kafka is well). A
    claim still pending after the first request's whole publish timeout was left by a request
    that died: it is returned as it is, and the job re-sent. In between, the answer is a quick
    503 to retry, never a wait: under an outage, retries must not pile up inside ingest.
    """
    deadline = time.monotonic() + _CONCURRENT_WAIT_S
    while claim.get("state") == "pending" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        raw = await deps.redis.get(key)
        if raw is None:  # released: the first request failed before queueing; a fresh retry will own it
            raise Unavailable("redis", "the first request with this Idempotency-Key failed; retry the request")
        claim = json.loads(raw)
    if claim.get("state") == "pending" and time.time() - float(claim.get("at", 0)) <= deps.settings.publish_timeout_s + 1:
        raise Unavailable("kafka", "the first request with this Idempotency-Key is still being queued; "
                                   "retry the request shortly")
    return claim


async def _complete_from_cache(request: GenerationRequested, cached: GenerationCompleted, deps: IngestDeps) -> None:
    now = utcnow().isoformat()
    result = cached.model_dump(mode="json", include={
        "url", "object_key", "sha256", "content_type", "size_bytes", "provider", "deterministic", "placeholder"})
    result |= {"cached": True, "metadata": request.metadata, "source_job_id": cached.job_id}
    await deps.jobs.update(
        request.job_id, "completed", frees_slot=False,  # a cache hit takes no in-flight slot
        tenant=request.tenant, url=cached.url, provider=cached.provider, cached=True,
        deterministic=cached.deterministic, placeholder=cached.placeholder,
        timings={"accepted_at": now, "completed_at": now}, result=result,
    )


class _Unconfirmed(Unavailable):
    """Kafka did not acknowledge the record: it may still have taken it."""


async def publish_or_fail(event: Event, topic: TopicKey, deps: IngestDeps, *, what: str,
                          outcomes: Counter, keep_queued: bool = False) -> None:
    """Produce ``event`` (a job just marked queued); if Kafka does not acknowledge it, count a
    ``publish_failed`` outcome and raise ``Unavailable``. ``what``: "job" or "comparison", for the
    messages.

    Bounded by our own timeout: a producer that lost the cluster can wait for metadata forever.
    After a timeout the broker may still take the message. ``keep_queued`` (the request has an
    Idempotency-Key, whose retry re-sends this job): the job stays queued. Otherwise it is marked
    failed (terminal, so later updates are ignored) and the client's retry makes a new one.
    """
    try:
        await asyncio.wait_for(send_event(deps.producer, deps.topics.name(topic), event),
                               deps.settings.publish_timeout_s)
    except (KafkaError, TimeoutError) as exc:
        outcomes.labels("publish_failed").inc()
        log.warning("%s %s: publish failed: %s", what, event.job_id, describe(exc))
        if not keep_queued:
            await deps.jobs.update(event.job_id, "failed", tenant=event.tenant, error={
                "code": "ingest_unavailable", "stage": "ingest", "retryable": True,
                "message": f"the {what} could not be queued (Kafka unavailable); submit it again",
            })
        raise _Unconfirmed("kafka", f"could not queue the {what}: Kafka did not acknowledge it "
                                    f"({describe(exc, detail=False)}); retry the request"
                                    + (" with the same Idempotency-Key" if keep_queued else "")) from exc


# --------------------------------------------------------------------------------- read and watch


async def get_job(job_id: str, tenant: str, deps: IngestDeps) -> JobView:
    """The job's status; a job of another tenant does not exist, as far as a caller can tell."""
    try:
        _JOB_ID.validate_python(job_id)
    except ValidationError:  # not an id we would ever have issued
        raise JobNotFound(job_id[:64]) from None
    view = await deps.jobs.get(job_id)
    if view is None or (deps.auth_enabled and view.tenant != tenant):
        raise JobNotFound(job_id)
    return await with_queue_estimate(view, deps)


async def with_queue_estimate(view: JobView, deps: IngestDeps) -> JobView:
    """A job waiting on its path, with its queue position and estimated start (read when asked, as
    they change with every job ahead of it)."""
    if deps.queue is None or view.status != "routed" or view.coalesced_with is not None:
        return view
    estimate = await deps.queue.estimate(view.job_id)
    if estimate is None:
        return view
    return view.model_copy(update={"queue_position": estimate.position, "estimated_start_s": estimate.start_in_s,
                                   "estimated_start_at": estimate.start_at})


KEEPALIVE = None


async def watch(job_id: str, after: str, deps: IngestDeps) -> AsyncIterator[tuple[str, JobView] | None]:
    """Every status change after stream id ``after``, then new ones as they happen, until the job ends.

    Yields ``(stream id, view)`` per change, and ``None`` (``KEEPALIVE``) when nothing changed for
    ``sse_keepalive_s``. Ends after a terminal status, or at once when the job ended before ``after``.
    """
    keepalive_s = deps.settings.sse_keepalive_s
    # A blocking read must return before the Redis client's socket timeout, or it fails.
    block_ms = max(1, int(1000 * min(keepalive_s, 0.8 * deps.connections.redis.socket_timeout_s)))
    last_sent = time.monotonic()
    ended = False
    while True:
        # Once the job is known to have ended, one short read collects what was written before it ended.
        changes = await deps.jobs.changes(job_id, after, block_ms=1 if ended else block_ms)
        for entry_id, view in changes:
            after = entry_id
            last_sent = time.monotonic()
            yield entry_id, view
            if view.status in TERMINAL:
                return
        if changes:
            continue
        if ended:
            return
        current = await deps.jobs.get(job_id)
        if current is None or current.status in TERMINAL:  # expired, or the caller saw the end already
            ended = True
            continue
        if time.monotonic() - last_sent >= keepalive_s:
            last_sent = time.monotonic()
            yield KEEPALIVE
