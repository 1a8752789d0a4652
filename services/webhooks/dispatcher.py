"""Sending due deliveries: claim, sign and POST, record the attempt, and schedule the next one.

Outcomes of an attempt:

    2xx                         delivered; nothing more is sent
    410 Gone                    the endpoint is disabled (a job's own URL: that delivery ends)
    refused by the SSRF rules   failed at once: the URL will not become acceptable by waiting
    anything else               tried again on the schedule (with jitter; a longer Retry-After wins),
                                failed once the schedule is used up
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter, Histogram

from services.common.backoff import RateLimitedLog
from services.common.contracts import utcnow
from services.common.webhooks import Attempt, Delivery, RedisWebhookStore
from services.webhooks.schedule import next_delay
from services.webhooks.sender import SendResult, WebhookSender
from services.webhooks.settings import WebhooksSettings

log = logging.getLogger(__name__)

ATTEMPTS = Counter("forgeline_webhook_attempts_total", "Delivery attempts, by outcome.", ["outcome"])
AFTER_EVENT = Histogram("forgeline_webhook_delivered_seconds", "From the terminal event to its delivery.",
                        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000))


class Dispatcher:
    def __init__(self, store: RedisWebhookStore, sender: WebhookSender, settings: WebhooksSettings) -> None:
        self._store = store
        self._sender = sender
        self._settings = settings
        self._woken = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._errors = RateLimitedLog(log, every_s=30.0)

    def wake(self) -> None:
        """New deliveries are due: look now instead of at the next poll."""
        self._woken.set()

    async def run(self) -> None:
        """Claim and send due deliveries until cancelled (a cancelled attempt's claim lapses: it is sent again)."""
        try:
            while True:
                self._woken.clear()  # before claiming: a wake that comes during the claim is not lost
                free = self._settings.concurrency - len(self._in_flight)
                claimed: list[tuple[str, str]] = []
                if free > 0:
                    try:
                        claimed = await self._store.claim(limit=free, lease_s=self._settings.lease_s)
                    except Exception as exc:  # noqa: BLE001 — Redis is down: try again at the next poll
                        self._errors.warning("cannot claim due deliveries: %s", type(exc).__name__)
                for job_id, delivery_id in claimed:
                    task = asyncio.create_task(self._attempt(job_id, delivery_id))
                    self._in_flight.add(task)
                    task.add_done_callback(self._done)
                if free > 0 and len(claimed) == free:
                    continue  # there may be more due right now
                try:
                    await asyncio.wait_for(self._woken.wait(), self._settings.poll_s)
                except TimeoutError:
                    pass
        finally:
            for task in self._in_flight:
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._woken.set()  # a slot is free
        if not task.cancelled() and task.exception() is not None:
            # Redis failed mid-way: the claim lapses after lease_s and the delivery is tried again.
            self._errors.warning("a delivery attempt failed: %s", type(task.exception()).__name__)

    async def _attempt(self, job_id: str, delivery_id: str) -> None:
        delivery = await self._store.delivery(job_id, delivery_id)
        if delivery is None or delivery.state != "pending":
            await self._store.forget_due(job_id, delivery_id)
            return
        url, secret = delivery.url, None
        if delivery.endpoint_id is not None:
            endpoint = await self._store.endpoint(delivery.tenant, delivery.endpoint_id)
            if endpoint is None or endpoint.disabled_at is not None:
                ATTEMPTS.labels("endpoint_disabled").inc()
                await self._store.record(delivery, None, state="disabled")
                return
            url, secret = endpoint.url, endpoint.secret
        else:
            secret = await self._store.secret(delivery.tenant)
        if secret is None:
            ATTEMPTS.labels("no_secret").inc()
            attempt = Attempt(at=utcnow(), latency_ms=0.0, error="the tenant has no signing secret: create one "
                                                                "with POST /v1/webhooks/secret")
            await self._store.record(delivery, attempt, state="failed")
            return
        at = utcnow()
        result = await self._sender.send(url, webhook_id=delivery.webhook_id, payload=delivery.payload, secret=secret)
        attempt = Attempt(at=at, status=result.status, latency_ms=result.latency_ms, error=result.error)
        await self._settle(delivery, attempt, result)

    async def _settle(self, delivery: Delivery, attempt: Attempt, result: SendResult) -> None:
        if result.delivered:
            ATTEMPTS.labels("delivered").inc()
            AFTER_EVENT.observe(max(0.0, time.time() - delivery.event_at.timestamp()))
            await self._store.record(delivery, attempt, state="delivered")
        elif result.status == 410:
            ATTEMPTS.labels("gone").inc()
            if delivery.endpoint_id is not None:
                await self._store.disable_endpoint(delivery.tenant, delivery.endpoint_id,
                                                   f"the receiver answered 410 Gone at {attempt.at.isoformat()}")
            await self._store.record(delivery, attempt, state="disabled")
        elif result.refused:
            ATTEMPTS.labels("refused").inc()
            await self._store.record(delivery, attempt, state="failed")
        else:
            delay = next_delay(self._settings.schedule_s, len(delivery.attempts) + 1, retry_after=result.retry_after,
                               jitter=self._settings.jitter, max_retry_after_s=self._settings.max_retry_after_s)
            ATTEMPTS.labels("retry" if delay is not None else "exhausted").inc()
            if delay is None:
                await self._store.record(delivery, attempt, state="failed")
            else:
                await self._store.record(delivery, attempt, state="pending", next_at=time.time() + delay)

