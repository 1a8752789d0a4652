"""Turning an image reference from a comparison request into checked image bytes.

==============  ======================================================================
``data_url``    decoded and checked where it stands (``inputs.decode_data_url``)
``url``         fetched with SSRF protection (``inputs.SafeFetcher``)
``stored``      read from Forgeline's bucket (ingest put it there); the SHA-256 must match
``job``         the image of a completed generation of the same tenant, from the bucket
==============  ======================================================================

Every failure is an :class:`~services.common.images.ImageInputError` naming the request
field, so a caller learns which image was wrong and why.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from services.common.blobstore import BlobStoreError
from services.common.contracts import (
    DataUrlImage,
    HttpsImage,
    ImageRef,
    JobImage,
    StoredImage,
)
from services.common.fetch import SafeFetcher
from services.common.images import (
    ImageFetchUnavailable,
    ImageRejected,
    ValidImage,
    decode_data_url,
    validate_image_bytes,
)
from services.common.ports import BlobStore, JobStore


@dataclass
class ImageResolver:
    fetcher: SafeFetcher
    blobs: BlobStore
    jobs: JobStore

    async def resolve(self, ref: ImageRef, *, field: str, tenant: str) -> ValidImage:
        """The checked image ``ref`` stands for; ``tenant`` may only reach its own jobs' images."""
        if isinstance(ref, DataUrlImage):
            return decode_data_url(ref.data_url, field=field)
        if isinstance(ref, HttpsImage):
            return await self.fetcher.fetch(ref.url, field=field)
        if isinstance(ref, StoredImage):
            return await self._stored(ref.object_key, ref.sha256, field=field)
        if isinstance(ref, JobImage):
            return await self._job(ref.job_id, field=field, tenant=tenant)
        raise ImageRejected(field, f"unknown image reference {type(ref).__name__}", code="bad_url")

    async def _job(self, job_id: str, *, field: str, tenant: str) -> ValidImage:
        view = await self.jobs.get(job_id)
        # Another tenant's job reads as missing: its existence is not ours to reveal.
        if view is None or view.kind != "generation" or (view.tenant and view.tenant != tenant):
            raise ImageRejected(field, f"no generation job {job_id}", code="job_not_found")
        if view.status != "completed" or not view.result:
            raise ImageRejected(field, f"generation job {job_id} is {view.status}, not completed: "
                                       "compare once it has an image", code="job_not_completed")
        return await self._stored(view.result["object_key"], view.result["sha256"], field=field)

    async def _stored(self, object_key: str, sha256: str, *, field: str) -> ValidImage:
        try:
            data = await self.blobs.get(object_key)
        except KeyError:
            raise ImageRejected(field, f"stored image {object_key} is gone (expired?)", code="fetch_failed") from None
        except BlobStoreError as exc:
            raise ImageFetchUnavailable(field, f"the image store did not answer: {exc}",
                                        code="fetch_failed") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ImageRejected(field, f"stored image {object_key} does not match its SHA-256", code="fetch_failed")
        return validate_image_bytes(data, field=field)
