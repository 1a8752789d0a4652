"""Images sent to the API: checked at the door, stored, and passed on as a claim check.

Images sent inline (data: URLs) are checked here — type by magic bytes, size, pixels,
decompression bombs — so a bad one is a 422/413 naming the field, never a failed job later.
Good ones go to Forgeline's bucket under ``inputs/`` (content-addressed, so a resend costs no
second upload) and travel through Kafka as a small
:class:`~services.common.contracts.StoredImage`: two 10 MB images would not fit a 10 MiB
message. https URLs get the checks possible without fetching (scheme, no credentials, no
private address literal); the comparer fetches them with the full SSRF checks.
"""

from __future__ import annotations

import logging

from services.common.blobstore import BlobStoreError, content_key
from services.common.contracts import HttpsImage, StoredImage
from services.common.fetch import check_url
from services.common.images import ImageInputError, decode_data_url
from services.ingest.deps import IngestDeps
from services.ingest.errors import InvalidRequest, PayloadTooLarge, Unavailable

log = logging.getLogger(__name__)

INPUTS_PREFIX = "inputs/"


def _refused(exc: ImageInputError) -> Exception:
    if exc.status == 413:
        return PayloadTooLarge(str(exc))
    return InvalidRequest([{"type": exc.code, "loc": ["body", exc.field], "msg": exc.reason}])


async def checked_image(value: str, *, field: str, deps: IngestDeps) -> StoredImage | HttpsImage:
    """A data: URL checked and stored, or an https URL that passes the checks possible without
    fetching. Raises ``InvalidRequest`` (422), ``PayloadTooLarge`` (413) or ``Unavailable`` (503)."""
    try:
        if not value.startswith("data:"):
            check_url(value, field=field, allow_loopback=deps.settings.allow_loopback_urls)
            return HttpsImage(url=value)
        image = decode_data_url(value, field=field)
    except ImageInputError as exc:
        raise _refused(exc) from None
    if deps.blobs is None:
        raise Unavailable("s3", "no image store is configured for uploaded images; give an https URL instead")
    key = content_key(INPUTS_PREFIX, image.sha256, image.content_type)
    try:
        if not await deps.blobs.exists(key):
            await deps.blobs.put(key, image.data, content_type=image.content_type)
    except BlobStoreError as exc:
        log.warning("input image upload failed: %s", exc)
        raise Unavailable("s3", "the image store did not take the image; retry the request") from exc
    return StoredImage(object_key=key, sha256=image.sha256, content_type=image.content_type)
