"""The webhooks process: deliver each job's terminal event to its webhook and its tenant's endpoints.

    forgeline run webhooks

It consumes ``generation.completed`` and ``generation.failed`` (there is no started-type topic)
and records the deliveries each one owes (``handlers``); a dispatcher running beside the consumer
loop sends them when due, on the Standard Webhooks schedule (``dispatcher``).
"""

from __future__ import annotations

import asyncio

import httpx
from aiokafka import ConsumerRecord

from services.common.bootstrap import Infra
from services.common.consumer import LoopSettings, Outcome
from services.common.contracts import GenerationCompleted, GenerationFailed, decode
from services.common.webhooks import RedisWebhookStore
from services.common.worker import run_until_stopped
from services.webhooks.dispatcher import Dispatcher
from services.webhooks.handlers import ScheduleHandler
from services.webhooks.sender import WebhookSender
from services.webhooks.settings import WebhooksSettings


async def build(settings: WebhooksSettings, infra: Infra) -> tuple[ScheduleHandler, Dispatcher]:
    store = RedisWebhookStore(infra.redis, infra.keys, ttl_s=settings.delivery_ttl_s)
    # Its own client: no proxy from the environment (it would resolve names again), no redirects.
    http = await infra.enter(httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                               timeout=httpx.Timeout(settings.timeout_s)))
    sender = WebhookSender(http, timeout_s=settings.timeout_s, allow_loopback=settings.allow_loopback_for_tests)
    dispatcher = Dispatcher(store, sender, settings)
    return ScheduleHandler(store, wake=dispatcher.wake), dispatcher


async def serve(settings: WebhooksSettings, infra: Infra, stop: asyncio.Event) -> None:
    handler, dispatcher = await build(settings, infra)
    completed, failed = infra.topics.name("generation.completed"), infra.topics.name("generation.failed")

    async def on_record(record: ConsumerRecord) -> Outcome:
        model = GenerationCompleted if record.topic == completed else GenerationFailed
        return await handler.handle(decode(model, record.value))

    loop = await infra.consumer_loop(on_record, LoopSettings(
        group_id=infra.groups.webhooks, topics=[completed, failed], concurrency=settings.consumer_concurrency))
    infra.readiness.set("kafka", True)
    await run_until_stopped(loop, stop, dispatcher.run())
