"""The dev stack's S3: moto's server mode, an in-memory S3 API (data is gone after a stop).

On every ``up`` the bucket is ensured with a public-read policy and checked the way a browser
uses it: an anonymous GET of an uploaded object must return its bytes.
"""

from __future__ import annotations

import importlib.util
import sys

import httpx
from pydantic import AnyHttpUrl, SecretStr

from services.common.blobstore import ensure_bucket, make_s3_client
from services.common.settings import S3Settings
from services.devstack.component import Answer, Component
from services.devstack.errors import DevStackError, Progress
from services.devstack.settings import DevStackSettings

# moto accepts any credentials; fixed ones keep `forgeline dev env` output stable.
ACCESS_KEY_ID = "forgeline"
SECRET_ACCESS_KEY = "forgeline-secret"
REGION = "us-east-1"
PROBE_KEY = "_forgeline/devstack-probe.txt"


def endpoint_url(settings: DevStackSettings) -> str:
    return f"http://{settings.host}:{settings.s3_port}"


def s3_settings(settings: DevStackSettings) -> S3Settings:
    """S3 settings that point at this stack (every field explicit, so no FORGELINE_S3_* leaks in)."""
    return S3Settings(
        endpoint_url=AnyHttpUrl(endpoint_url(settings)),
        region=REGION,
        bucket=settings.s3_bucket,
        access_key_id=SecretStr(ACCESS_KEY_ID),
        secret_access_key=SecretStr(SECRET_ACCESS_KEY),
        addressing_style="path",
        public_base_url=None,
    )


class S3Component(Component):
    name = "s3"
    marker = "moto.server"

    def __init__(self, settings: DevStackSettings) -> None:
        super().__init__(state_dir=settings.state_dir, host=settings.host, port=settings.s3_port)
        self.settings = settings

    @property
    def endpoint(self) -> str:
        return endpoint_url(self.settings)

    def ports(self) -> dict[int, str]:
        return {self.port: self.settings.env_name("s3_port")}

    def prepare(self, progress: Progress) -> list[str]:
        # Server mode needs moto's [server] extra (flask, flask-cors), not just moto.
        missing = [m for m in ("moto", "flask", "flask_cors") if importlib.util.find_spec(m) is None]
        if missing:
            raise DevStackError(
                f"the S3 endpoint needs moto's server mode ({', '.join(missing)} not importable); "
                "run `pip install 'forgeline[dev]'` (or `pip install 'moto[server]'`)."
            )
        self.process.dir.mkdir(parents=True, exist_ok=True)
        # The same interpreter as ours, so it finds the moto we just checked for.
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def check(self) -> Answer:
        try:
            response = httpx.head(f"{self.endpoint}/{self.settings.s3_bucket}", timeout=2.0)
        except httpx.HTTPError as exc:
            return Answer(False, f"HTTP request failed: {exc}")
        if response.status_code == 200:
            return Answer(True, f"bucket {self.settings.s3_bucket!r} at {self.endpoint}")
        if response.status_code == 404:
            return Answer(True, f"S3 API answers; bucket {self.settings.s3_bucket!r} not created yet")
        return Answer(False, f"HEAD /{self.settings.s3_bucket} returned HTTP {response.status_code}")

    def provision(self, progress: Progress) -> None:
        bucket = self.settings.s3_bucket
        client = make_s3_client(s3_settings(self.settings))
        try:
            if ensure_bucket(client, bucket, public_read=True):
                progress(f"created bucket {bucket!r} (public read)")
            # Prove what services rely on: objects are readable anonymously at <endpoint>/<bucket>/<key>.
            probe = b"forgeline devstack probe\n"
            client.put_object(Bucket=bucket, Key=PROBE_KEY, Body=probe, ContentType="text/plain")
            url = f"{self.endpoint}/{bucket}/{PROBE_KEY}"
            response = httpx.get(url, timeout=5.0)
            client.delete_object(Bucket=bucket, Key=PROBE_KEY)
        finally:
            client.close()
        if response.status_code != 200 or response.content != probe:
            raise DevStackError(
                f"s3: anonymous GET {url} returned HTTP {response.status_code}, not the uploaded bytes; "
                f"see {self.process.log_path}"
            )
