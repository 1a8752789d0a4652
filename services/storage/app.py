"""The storage process: upload generated images, cache the result, publish completion.

    forgeline run storage
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from aiokafka import ConsumerRecord

from services.common.blobstore import S3BlobStore
from services.common.cache import LruTtlCache, RedisResultCache
from services.common.consumer import ConsumerLoop, LoopSettings, Outcome
from services.common.contracts import GenerationGenerated, decode
from services.common.jobs import RedisJobStore, RedisTerminalGuard
from services.common.redis import KeySpace
from services.common.settings import Connections
from services.common.topics import GroupIds, Topics
from services.common.worker import (
    redis_client,
    run_until_stopped,
    started_consumer,
    started_producer,
)
from services.storage.handlers import StoreHandler
from services.storage.settings import StorageSettings


async def serve(settings: StorageSettings, connections: Connections, stop: asyncio.Event) -> None:
    topics, groups = Topics.from_settings(connections.topics), GroupIds.from_settings(connections.topics)
    keys = KeySpace(connections.redis.key_prefix)
    async with AsyncExitStack() as stack:
        producer = await started_producer(stack, connections.kafka)
        consumer = await started_consumer(stack, connections.kafka, group_id=groups.storage)
        redis = redis_client(stack, connections.redis)
        handler = StoreHandler(
            store=S3BlobStore(connections.s3),
            cache=RedisResultCache(redis, keys, ttl_s=settings.cache_ttl_s,
                              local=LruTtlCache(settings.local_cache_size, settings.local_cache_ttl_s)),
            topics=topics, jobs=RedisJobStore(redis, keys), guard=RedisTerminalGuard(redis, keys), key_prefix=settings.key_prefix,
        )

        async def handle(record: ConsumerRecord) -> Outcome:
            return await handler.handle(decode(GenerationGenerated, record.value))

        loop = ConsumerLoop(consumer, producer, handle, LoopSettings(
            group_id=groups.storage, topics=[topics.name("generation.generated")], concurrency=settings.concurrency))
        await run_until_stopped(loop, stop)
