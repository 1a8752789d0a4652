from __future__ import annotations

from services.common.cache import LruTtlCache
from services.common.images import sniff_content_type
from tests.helpers import ManualClock


def test_lru_evicts_the_least_recently_used():
    cache: LruTtlCache[int] = LruTtlCache(maxsize=2, ttl_s=60, clock=ManualClock(0.0))
    cache.set("a", 1)
    cache.set("b", 2)
    cache.get("a")  # a is now more recent than b
    cache.set("c", 3)

    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)


def test_entries_expire_after_their_ttl():
    clock = ManualClock(0.0)
    cache: LruTtlCache[str] = LruTtlCache(maxsize=10, ttl_s=5, clock=clock)
    cache.set("k", "v")

    clock.now = 4.9
    assert cache.get("k") == "v"
    clock.now = 5.0
    assert cache.get("k") is None
    assert len(cache) == 0


def test_zero_size_cache_stores_nothing():
    cache: LruTtlCache[str] = LruTtlCache(maxsize=0, ttl_s=5)
    cache.set("k", "v")

    assert cache.get("k") is None


def test_sniffing_trusts_bytes_not_names():
    assert sniff_content_type(b"\x89PNG\r\n\x1a\n....") == "image/png"
    assert sniff_content_type(b"\xff\xd8\xff\xe0....") == "image/jpeg"
    assert sniff_content_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_content_type(b"GIF89a") is None
    assert sniff_content_type(b"") is None
