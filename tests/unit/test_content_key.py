"""The object-key format storage (generated images) and ingest (uploaded inputs) share."""

from __future__ import annotations

import hashlib

from services.common.blobstore import content_key


def test_content_key_is_prefix_fanout_digest_and_extension() -> None:
    digest = hashlib.sha256(b"same bytes").hexdigest()
    assert content_key("images/", digest, "image/png") == f"images/{digest[:2]}/{digest}.png"
    assert content_key("inputs/", digest, "image/jpeg") == f"inputs/{digest[:2]}/{digest}.jpg"
    assert content_key("", digest, "image/webp") == f"{digest[:2]}/{digest}.webp"
