"""The ``BlobStore`` contract: put returns the public URL, exists, get (``KeyError`` when missing)."""

from __future__ import annotations

import hashlib

import pytest

from services.devstack.smoke import demo_png

BACKENDS = ("memory", "s3")


async def test_put_then_get_returns_the_same_bytes_at_the_public_url(impl, blob_key):
    store = impl.blob_store()
    png = demo_png("contract")
    key = blob_key(f"{hashlib.sha256(png).hexdigest()}.png")

    assert not await store.exists(key)
    url = await store.put(key, png, content_type="image/png")

    assert url == store.public_url(key)
    assert url.endswith("/" + key)
    assert await store.exists(key)
    assert await store.get(key) == png


async def test_a_second_put_replaces_the_bytes(impl, blob_key):
    store = impl.blob_store()
    key = blob_key("replaced.png")
    await store.put(key, b"\x89PNG first", content_type="image/png")
    await store.put(key, b"\x89PNG second", content_type="image/png", cache_control="no-store")

    assert await store.get(key) == b"\x89PNG second"


async def test_s3_missing_key_is_a_key_error(impl, blob_key):
    store = impl.blob_store()
    with pytest.raises(KeyError):
        await store.get(blob_key("never-written.png"))
    assert not await store.exists(blob_key("never-written.png"))
