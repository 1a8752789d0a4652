"""The ``ResultCache`` contract: what was put is got back; lookups are counted by outcome."""

from __future__ import annotations

from services.common import contracts as c
from services.common.cache import LruTtlCache


def _completed(prompt: str) -> c.GenerationCompleted:
    return c.GenerationCompleted(
        job_id=c.new_job_id(), tenant="t", url=f"https://cdn.test/{prompt}.png", object_key=f"{prompt}.png",
        sha256="a" * 64, content_type="image/png", size_bytes=10, spec=c.ImageSpec(prompt=prompt), path="primary",
        provider="procedural", deterministic=True)


async def test_a_miss_then_a_hit_of_what_was_put(impl):
    cache = impl.result_cache()
    done = _completed("ice sword")
    key = done.spec.cache_key()

    assert await cache.get(key) is None
    await cache.put(key, done)
    found = await cache.get(key)

    assert found == done and found.to_json_bytes() == done.to_json_bytes()
    assert await cache.get(_completed("fire axe").spec.cache_key()) is None
    assert await cache.stats() == {"miss": 2, "hit_redis": 1}


async def test_a_later_put_replaces_the_entry(impl):
    cache = impl.result_cache()
    first, second = _completed("bow"), _completed("bow")
    key = first.spec.cache_key()
    await cache.put(key, first)
    await cache.put(key, second)

    assert (await cache.get(key)).job_id == second.job_id


async def test_the_local_level_answers_first_and_is_counted_apart(impl):
    cache = impl.result_cache(local=LruTtlCache(maxsize=8, ttl_s=60))
    done = _completed("potion")
    key = done.spec.cache_key()
    await cache.put(key, done)

    assert await cache.get(key) == done
    assert await cache.get(key) == done
    assert await cache.stats() == {"hit_local": 2}


async def test_a_fresh_cache_has_counted_nothing(impl):
    assert await impl.result_cache().stats() == {}
