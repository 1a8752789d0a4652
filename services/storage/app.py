"""The storage process: upload generated images, cache the result, publish completion.

    forgeline run storage
"""

from __future__ import annotations

import asyncio

from services.common.bootstrap import Infra
from services.common.cache import LruTtlCache, RedisResultCache
from services.common.consumer import LoopSettings
from services.common.contracts import GenerationGenerated
from services.common.recent_jobs import RedisRecentJobs
from services.common.worker import consume
from services.storage.handlers import StoreHandler
from services.storage.settings import StorageSettings


async def build(settings: StorageSettings, infra: Infra) -> StoreHandler:
    return StoreHandler(
        store=infra.blobs,
        cache=RedisResultCache(infra.redis, infra.keys, ttl_s=settings.cache_ttl_s,
                               local=LruTtlCache(settings.local_cache_size, settings.local_cache_ttl_s)),
        topics=infra.topics, jobs=infra.jobs(), guard=infra.terminal_guard(), key_prefix=settings.key_prefix,
        recent=RedisRecentJobs(infra.redis, infra.keys), cache_scope=infra.cache_scope,
    )


async def serve(settings: StorageSettings, infra: Infra, stop: asyncio.Event) -> None:
    handler = await build(settings, infra)
    await consume(infra, stop, LoopSettings(
        group_id=infra.groups.storage, topics=[infra.topics.name("generation.generated")],
        concurrency=settings.concurrency), GenerationGenerated, handler.handle)
