"""A terminal event → the deliveries it owes: the job's own ``webhook_url`` and the tenant's endpoints.

Nothing is sent here: each delivery is recorded and made due (``RedisWebhookStore.schedule``),
and the dispatcher sends it. The record's offset is committed once every delivery is recorded,
so a crash before that replays the event, and the replay finds the same deliveries (same ids,
same ``webhook-id``, same body) instead of making new ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Counter

from services.common.consumer import Outcome
from services.common.contracts import WEBHOOK_EVENTS, GenerationCompleted, GenerationFailed
from services.common.webhooks import Delivery, RedisWebhookStore, message_id

log = logging.getLogger(__name__)

SCHEDULED = Counter("forgeline_webhook_deliveries_scheduled_total", "Deliveries recorded, by target kind.", ["target"])

Terminal = GenerationCompleted | GenerationFailed


def event_name(event: Terminal) -> str:
    """The job event a webhook filter names: ``completed`` or ``failed``."""
    return "completed" if isinstance(event, GenerationCompleted) else "failed"


def payload_of(event: Terminal) -> str:
    """The body every attempt sends: Standard Webhooks' ``type``, ``timestamp`` and ``data`` (the event)."""
    data = event.model_dump(mode="json", exclude={"webhook_url", "webhook_events", "trace"})
    return json.dumps({"type": f"generation.{event_name(event)}", "timestamp": event.created_at.isoformat(),
                       "data": data}, separators=(",", ":"), ensure_ascii=False)


@dataclass
class ScheduleHandler:
    store: RedisWebhookStore
    wake: Callable[[], None] = field(default=lambda: None)  # tells this process's dispatcher at once

    async def handle(self, event: Terminal) -> Outcome:
        name = event_name(event)
        event_type, payload = f"generation.{name}", payload_of(event)
        common = {"job_id": event.job_id, "tenant": event.tenant, "event_type": event_type,
                  "event_at": event.created_at, "webhook_id": message_id(event.job_id, event_type),
                  "payload": payload}
        deliveries = []
        if event.webhook_url and name in (event.webhook_events or WEBHOOK_EVENTS):
            deliveries.append(Delivery(delivery_id="job", url=event.webhook_url, **common))
        for endpoint in await self.store.endpoints(event.tenant):
            if endpoint.disabled_at is None and name in endpoint.events:
                deliveries.append(Delivery(delivery_id=endpoint.endpoint_id, url=endpoint.url,
                                           endpoint_id=endpoint.endpoint_id, **common))
        for delivery in deliveries:
            if await self.store.schedule(delivery):
                SCHEDULED.labels("job" if delivery.endpoint_id is None else "endpoint").inc()
        if deliveries:
            self.wake()
        return Outcome()
