"""The S3 store runs as many calls at once as ``max_connections``, not the default executor's cpu + 4."""

from __future__ import annotations

import asyncio
import threading

from services.common.blobstore import S3BlobStore
from services.common.settings import S3Settings


class _BarrierClient:
    """A boto3 stand-in whose uploads each wait until ``parties`` of them run at once."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=30)
        self.keys: list[str] = []

    def put_object(self, *, Key: str, **_fields) -> dict:  # noqa: N803 — boto3's argument names
        self.barrier.wait()  # BrokenBarrierError unless every upload has its own thread
        self.keys.append(Key)
        return {}


async def test_uploads_beyond_the_default_executor_run_at_once() -> None:
    parties = 24  # above min(32, cpu + 4) on any machine of 19 cores or fewer
    client = _BarrierClient(parties)
    store = S3BlobStore(S3Settings(max_connections=parties), client=client)

    urls = await asyncio.gather(*(store.put(f"k{i}", b"x", content_type="image/png") for i in range(parties)))

    assert sorted(client.keys) == sorted(f"k{i}" for i in range(parties))
    assert urls[0].endswith("/forgeline-dev/k0")
