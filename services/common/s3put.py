"""An S3 ``PutObject`` as one signed HTTP request: botocore's own SigV4 signer, sent through urllib3.

boto3's ``put_object`` spent about 1.2 ms of CPU per 40 KB upload here, most of it in botocore's
machinery around the request (its event hooks, parameter validation, serialisation, endpoint
rules, response parsing), not in signing or sending it: storage's largest cost per job. An image
upload needs none of that: its URL, headers and body are known. :class:`SignedPut` builds the same
request, has it signed by ``botocore.auth.S3SigV4Auth`` (the class boto3 itself signs S3 requests
with; the payload's SHA-256 is signed too, so the store rejects a body changed on the way) and
sends it on a pooled urllib3 connection, for about 0.55 ms (``bench/s3_put.py``).

Used for uploads only; every other call (HEAD, GET, bucket set-up, the spend journal) stays on
boto3. ``FORGELINE_S3_SIGNED_PUT=false`` sends uploads through boto3 too. So does a proxy set in
the environment (``HTTPS_PROXY``...), which boto3 honours and this client does not.
"""

from __future__ import annotations

import random
import re
import time
import urllib.request
from urllib.parse import quote, urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.httpsession import get_cert_path

from services.common.settings import S3Settings

#: Attempts per upload, as boto3's "standard" retry mode makes; content-addressed PUTs are idempotent.
ATTEMPTS = 3
#: Answers worth another attempt: the store's own trouble or its "slow down" (S3's 503 SlowDown).
RETRY_STATUSES = frozenset((429, 500, 502, 503, 504))
_ERROR_FIELD = re.compile(rb"<(Code|Message)>([^<]{0,200})</\1>")


class PutFailed(Exception):
    """The store did not take the object; the message has the HTTP status and S3's error code."""


def object_url(settings: S3Settings, key: str) -> str:
    """Where ``key`` is PUT: path style (``<endpoint>/<bucket>/<key>``) or virtual-hosted
    (``<scheme>://<bucket>.<host>/<key>``), as ``S3Settings.addressing_style`` says. ``auto`` is
    virtual-hosted on AWS itself (no endpoint set) and path style on any other endpoint (R2, MinIO)."""
    path = quote(key, safe="/~")
    if settings.endpoint_url is None:
        if settings.addressing_style == "path":
            return f"https://s3.{settings.region}.amazonaws.com/{settings.bucket}/{path}"
        return f"https://{settings.bucket}.s3.{settings.region}.amazonaws.com/{path}"
    endpoint = str(settings.endpoint_url).rstrip("/")
    if settings.addressing_style == "virtual":
        parts = urlsplit(endpoint)
        return f"{parts.scheme}://{settings.bucket}.{parts.netloc}{parts.path}/{path}"
    return f"{endpoint}/{settings.bucket}/{path}"


def usable(settings: S3Settings) -> bool:
    """Whether uploads may take this path: turned on, and no proxy in the environment for the endpoint."""
    if not settings.signed_put:
        return False
    endpoint = urlsplit(object_url(settings, "probe"))
    proxied = endpoint.scheme in urllib.request.getproxies()
    return not proxied or bool(urllib.request.proxy_bypass(endpoint.hostname or ""))


_KNOWN_SHA256 = "forgeline_payload_sha256"


class _SigV4KnownPayload(S3SigV4Auth):
    """botocore's S3 signer, signing the payload hash the caller already has instead of hashing the body again."""

    def payload(self, request: AWSRequest) -> str:
        known = request.context.get(_KNOWN_SHA256)
        return known if known is not None else super().payload(request)


class SignedPut:
    """Uploads, thread-safe: call :meth:`put` from as many threads as ``S3Settings.max_connections``."""

    def __init__(self, settings: S3Settings) -> None:
        self._settings = settings
        self._credentials = Credentials(settings.access_key_id.get_secret_value(),
                                        settings.secret_access_key.get_secret_value())
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=settings.max_connections, block=False, retries=False,
            timeout=urllib3.Timeout(connect=5.0, read=30.0), ca_certs=get_cert_path(True))

    def __repr__(self) -> str:  # it holds credentials; never print them
        return f"SignedPut(bucket={self._settings.bucket!r})"

    def put(self, key: str, data: bytes, *, content_type: str, cache_control: str, sha256: str | None = None) -> None:
        """PUT ``data`` at ``key``; up to :data:`ATTEMPTS` tries on a connection error or a 429/5xx answer.

        ``sha256``: the data's SHA-256 in hex if the caller has it, signed instead of hashing the body
        again; the store checks it against the body it receives. Raises ``PutFailed`` (the status, S3's
        code and message) or the last urllib3 error."""
        url = object_url(self._settings, key)
        for attempt in range(1, ATTEMPTS + 1):
            headers = self._signed(url, data, content_type, cache_control, sha256)
            try:
                response = self._pool.request("PUT", url, body=data, headers=headers)
            except urllib3.exceptions.HTTPError:
                if attempt == ATTEMPTS:
                    raise
            else:
                if 200 <= response.status < 300:
                    return
                if response.status not in RETRY_STATUSES or attempt == ATTEMPTS:
                    raise PutFailed(_describe(response))
            time.sleep(random.uniform(0, 0.1 * 2 ** attempt))  # full jitter, as boto3's standard mode

    def _signed(self, url: str, data: bytes, content_type: str, cache_control: str,
                sha256: str | None = None) -> dict[str, str]:
        """The headers of one attempt, signed now (SigV4 signatures carry their time)."""
        request = AWSRequest("PUT", url, data=data, headers={
            "Content-Type": content_type, "Cache-Control": cache_control, "Content-Length": str(len(data))})
        request.context["payload_signing_enabled"] = True  # x-amz-content-sha256: the body's own hash
        request.context[_KNOWN_SHA256] = sha256
        _SigV4KnownPayload(self._credentials, "s3", self._settings.region).add_auth(request)
        return dict(request.headers.items())


def _describe(response: urllib3.BaseHTTPResponse) -> str:
    """``HTTP 403 SignatureDoesNotMatch: <message>``, from the first bytes of S3's XML error."""
    found = _ERROR_FIELD.findall(response.data[:4096])
    fields = {name.decode(): value.decode("utf-8", "replace") for name, value in found}
    code = fields.get("Code", response.reason or "")
    message = f": {fields['Message']}" if "Message" in fields else ""
    return f"HTTP {response.status} {code}{message}"
