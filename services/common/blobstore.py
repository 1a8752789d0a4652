"""Publishing images to an S3-compatible store (AWS S3, Cloudflare R2, MinIO, moto).

Objects are content-addressed (:func:`content_key`): the same bytes always land at the same key.
boto3 is synchronous; the async ``S3BlobStore`` runs its calls in its own worker threads, as many
as ``S3Settings.max_connections`` (the default executor has only ``cpu + 4``, which capped uploads
in flight below the storage service's concurrency), so the event loop never blocks on an upload.
Uploads go out as one signed request each (``services.common.s3put``), the other calls through boto3.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import boto3
import urllib3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.common.errors import Retryable
from services.common.images import EXTENSIONS
from services.common.s3put import PutFailed, SignedPut, usable
from services.common.settings import S3Settings

T = TypeVar("T")

#: Objects are content-addressed, so a URL's bytes never change: let CDNs and browsers keep them.
IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"


def content_key(prefix: str, digest: str, content_type: str) -> str:
    """The key of an object by its content: ``<prefix><sha[:2]>/<sha>.<ext>``, so the same bytes always
    land at the same key (and URL) and a resend costs no second upload."""
    return f"{prefix}{digest[:2]}/{digest}.{EXTENSIONS[content_type]}"


class BlobStoreError(Retryable):
    """The object store refused or failed a request. Retryable: stores recover."""


def make_s3_client(settings: S3Settings):  # -> botocore S3 client (its type is generated at run time)
    """A boto3 S3 client with explicit timeouts and no hidden retry storm."""
    return boto3.client(
        "s3",
        endpoint_url=str(settings.endpoint_url) if settings.endpoint_url else None,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id.get_secret_value(),
        aws_secret_access_key=settings.secret_access_key.get_secret_value(),
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"mode": "standard", "max_attempts": 3},
            s3={"addressing_style": settings.addressing_style},
            max_pool_connections=settings.max_connections,
            signature_version="s3v4",
        ),
    )


def public_read_policy(bucket: str) -> str:
    """A bucket policy that lets anyone GET objects (what a CDN origin or a browser needs)."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "PublicReadObjects",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": ["s3:GetObject"],
                    "Resource": [f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
    )


def ensure_bucket(client, bucket: str, *, public_read: bool) -> bool:
    """Create ``bucket`` if it is missing; returns True when it was created.

    With ``public_read`` the bucket gets a policy allowing anonymous GET of its objects.
    Safe to call any number of times.
    """
    created = False
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket", "NotFound"}:
            raise BlobStoreError(f"cannot check bucket {bucket!r}: {exc}") from exc
        try:
            client.create_bucket(Bucket=bucket)
            created = True
        except ClientError as create_exc:
            code = create_exc.response.get("Error", {}).get("Code")
            if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise BlobStoreError(f"cannot create bucket {bucket!r}: {create_exc}") from create_exc
    if public_read:
        try:
            client.put_bucket_policy(Bucket=bucket, Policy=public_read_policy(bucket))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NotImplemented":
                raise
            # Stores without bucket policies (S3Proxy, the dev stack's endpoint) take the canned ACL.
            client.put_bucket_acl(Bucket=bucket, ACL="public-read")
    return created


class S3BlobStore:
    """``BlobStore`` over an S3 API endpoint."""

    def __init__(self, settings: S3Settings, client=None) -> None:
        """``client``: a boto3 S3 client to use instead of a new one; uploads then go through it too."""
        self._settings = settings
        self._client = client if client is not None else make_s3_client(settings)
        self._uploads = SignedPut(settings) if client is None and usable(settings) else None
        self._threads = ThreadPoolExecutor(settings.max_connections, thread_name_prefix="s3")

    async def _call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    def __repr__(self) -> str:  # the client holds credentials; never print it
        return f"S3BlobStore(bucket={self._settings.bucket!r}, endpoint={str(self._settings.endpoint_url)!r})"

    def public_url(self, key: str) -> str:
        return self._settings.public_url(key)

    async def ensure_bucket(self, *, public_read: bool) -> bool:
        """Create the configured bucket if missing (see ``ensure_bucket``)."""
        return await self._call(ensure_bucket, client=self._client, bucket=self._settings.bucket,
                                public_read=public_read)

    async def put(
        self, key: str, data: bytes, *, content_type: str, cache_control: str = IMMUTABLE_CACHE_CONTROL,
        sha256: str | None = None,
    ) -> str:
        try:
            if self._uploads is not None:
                await self._call(self._uploads.put, key, data=data, content_type=content_type,
                                 cache_control=cache_control, sha256=sha256)
            else:
                await self._call(self._client.put_object, Bucket=self._settings.bucket, Key=key, Body=data,
                                 ContentType=content_type, CacheControl=cache_control)
        except (BotoCoreError, ClientError, PutFailed, urllib3.exceptions.HTTPError) as exc:
            raise BlobStoreError(f"upload of {key!r} to bucket {self._settings.bucket!r} failed: {exc}") from exc
        return self.public_url(key)

    async def exists(self, key: str) -> bool:
        try:
            await self._call(self._client.head_object, Bucket=self._settings.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise BlobStoreError(f"cannot check {key!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"cannot check {key!r}: {exc}") from exc

    async def get(self, key: str) -> bytes:
        try:
            response = await self._call(self._client.get_object, Bucket=self._settings.bucket, Key=key)
            return await self._call(response["Body"].read)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise KeyError(key) from exc
            raise BlobStoreError(f"download of {key!r} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreError(f"download of {key!r} failed: {exc}") from exc
