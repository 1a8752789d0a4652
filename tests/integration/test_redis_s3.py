"""Redis and the S3 endpoint, for real: what a browser or CDN sees.

The ``BlobStore`` contract the S3 store shares with its fake is in ``tests/contracts/test_blobstore.py``.
"""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest

from services.common.blobstore import IMMUTABLE_CACHE_CONTROL, S3BlobStore
from services.common.cache import LruTtlCache, RedisResultCache
from services.common.redis import KeySpace
from services.devstack.smoke import demo_png

pytestmark = pytest.mark.integration


async def test_redis_set_get_with_ttl_then_expiry(redis, connections):
    keys = KeySpace(connections.redis.key_prefix)
    key, short = keys.key("ttl", "long"), keys.key("ttl", "short")

    await redis.set(key, b"value", ex=60)
    await redis.set(short, b"gone soon", px=150)

    assert await redis.get(key) == b"value"
    assert 0 < await redis.ttl(key) <= 60
    assert await redis.get(short) == b"gone soon"
    await asyncio.sleep(0.4)
    assert await redis.get(short) is None


async def test_s3_upload_then_anonymous_http_get_returns_the_same_bytes(connections, s3_key):
    store = S3BlobStore(connections.s3)
    png = demo_png("s3 test")
    key = s3_key(f"{hashlib.sha256(png).hexdigest()}.png")

    url = await store.put(key, png, content_type="image/png")
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)  # no credentials: what a browser or CDN does

    assert url == connections.s3.public_url(key)
    assert response.status_code == 200
    assert response.content == png
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == IMMUTABLE_CACHE_CONTROL
    assert await store.get(key) == png


async def test_ensure_bucket_is_idempotent(connections):
    store = S3BlobStore(connections.s3)

    assert await store.ensure_bucket(public_read=True) is False  # the session fixture made it already


async def test_cache_counts_reach_redis_once_per_flush_interval_and_every_replica_sees_them(redis, connections):
    keys = KeySpace(connections.redis.key_prefix + "cache-stats:")
    now = [0.0]
    cache = RedisResultCache(redis, keys, ttl_s=60, local=LruTtlCache(0, 0), stats_flush_s=1.0, clock=lambda: now[0])
    other_replica = RedisResultCache(redis, keys, ttl_s=60, local=LruTtlCache(0, 0))

    assert await cache.get("a" * 64) is None
    assert await cache.get("b" * 64) is None
    assert await other_replica.stats() == {}  # not flushed yet: no round trip per lookup
    now[0] = 1.0
    assert await cache.get("c" * 64) is None  # a second on: this lookup adds all three

    assert await other_replica.stats() == {"miss": 3}
    assert await cache.get("d" * 64) is None
    assert await cache.stats() == {"miss": 4}  # a replica's own stats include what it has not flushed
