"""Uploads as one signed request (``services.common.s3put``), against an S3Proxy that checks signatures.

The dev stack's S3 endpoint takes any signature, so here a second S3Proxy runs, on a free port in a
throwaway state, with SigV4 checking on, as AWS S3 and R2 check: a request signed wrongly, with
the wrong secret or over a body that changed, is refused there as it would be in production.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from pydantic import SecretStr

from services.common.blobstore import IMMUTABLE_CACHE_CONTROL, BlobStoreError, S3BlobStore, make_s3_client
from services.common.s3put import SignedPut
from services.devstack.component import Answer
from services.devstack.errors import Progress
from services.devstack.process import free_ports
from services.devstack.s3 import S3ProxyComponent, s3_settings
from services.devstack.settings import DevStackSettings

pytestmark = pytest.mark.integration


class CheckingS3Proxy(S3ProxyComponent):
    """S3Proxy refusing unsigned and wrongly signed requests; its bucket made with a signed call."""

    check_signatures = True

    def check(self) -> Answer:
        answer = super().check()  # an unsigned HEAD: 403 once it listens
        return answer if answer.ok or "HTTP 403" not in answer.detail else Answer(True, "refuses unsigned requests")

    def provision(self, progress: Progress) -> None:
        client = make_s3_client(s3_settings(self.settings))
        try:
            client.create_bucket(Bucket=self.settings.s3_bucket)
        finally:
            client.close()


@pytest.fixture(scope="module")
def checking_s3(tmp_path_factory) -> Iterator[DevStackSettings]:
    (port,) = free_ports(1)
    settings = DevStackSettings(state_dir=Path(tmp_path_factory.mktemp("s3-signed")), s3_port=port)
    server = CheckingS3Proxy(settings)
    server.start()
    try:
        yield settings
    finally:
        server.stop()


def _stored(settings: DevStackSettings, key: str) -> dict:
    client = make_s3_client(s3_settings(settings))
    try:
        return client.get_object(Bucket=settings.s3_bucket, Key=key)
    finally:
        client.close()


async def test_an_upload_signed_by_the_store_is_accepted_and_stored_with_its_headers(checking_s3):
    store = S3BlobStore(s3_settings(checking_s3))
    data = os.urandom(40_000)
    key = f"images/{hashlib.sha256(data).hexdigest()}.png"

    url = await store.put(key, data, content_type="image/png")

    stored = _stored(checking_s3, key)
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "image/png"
    assert stored["CacheControl"] == IMMUTABLE_CACHE_CONTROL
    assert url.endswith(f"/{checking_s3.s3_bucket}/{key}")


async def test_a_key_that_needs_escaping_is_signed_as_the_store_reads_it(checking_s3):
    store = S3BlobStore(s3_settings(checking_s3))
    key = "tenant a/épée+shield ~1.png"

    await store.put(key, b"escaped", content_type="image/png")

    assert _stored(checking_s3, key)["Body"].read() == b"escaped"


async def test_the_wrong_secret_is_refused_with_the_stores_reason_and_no_secret_in_it(checking_s3):
    wrong = s3_settings(checking_s3).model_copy(update={"secret_access_key": SecretStr("not-the-secret")})
    store = S3BlobStore(wrong)

    with pytest.raises(BlobStoreError) as caught:
        await store.put("images/refused.png", b"x", content_type="image/png")

    assert "HTTP 403" in str(caught.value)
    assert "SignatureDoesNotMatch" in str(caught.value)
    assert "not-the-secret" not in str(caught.value) and "not-the-secret" not in repr(store)


def test_a_body_changed_after_signing_is_refused(checking_s3):
    """The payload's SHA-256 is signed: the store checks the body against it."""
    uploads = SignedPut(s3_settings(checking_s3))
    url = f"http://127.0.0.1:{checking_s3.s3_port}/{checking_s3.s3_bucket}/images/tampered.png"
    headers = uploads._signed(url, b"the signed body", "image/png", IMMUTABLE_CACHE_CONTROL)

    response = uploads._pool.request("PUT", url, body=b"another body!!!", headers=headers)

    assert response.status in (400, 403), response.data[:300]


async def test_the_digest_storage_already_has_is_signed_and_a_wrong_one_is_refused_by_the_store(checking_s3):
    store = S3BlobStore(s3_settings(checking_s3))
    data = os.urandom(40_000)
    digest = hashlib.sha256(data).hexdigest()

    await store.put(f"images/{digest}.png", data, content_type="image/png", sha256=digest)
    with pytest.raises(BlobStoreError) as caught:
        await store.put("images/mismatch.png", data, content_type="image/png",
                        sha256=hashlib.sha256(b"other bytes").hexdigest())

    assert _stored(checking_s3, f"images/{digest}.png")["Body"].read() == data
    assert "HTTP 400" in str(caught.value)
    with pytest.raises(ClientError):
        _stored(checking_s3, "images/mismatch.png")
