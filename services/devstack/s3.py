"""The dev stack's S3 endpoint: S3Proxy on disk by default, or moto in memory.

S3Proxy (``FORGELINE_DEV_S3_SERVER=s3proxy``, the default) stores objects as files under
``<state_dir>/s3/data``, so every URL a completed event carries still answers after ``dev down``
and ``dev up``; ``dev reset`` deletes them. moto (``=moto``) keeps objects in memory and forgets
them on stop; it starts without a JVM. Like moto, the local S3Proxy checks no signatures
(``s3proxy.authorization=none``): it listens on loopback only, and anonymous reads of the bucket
are what a CDN in front of it would do anyway.

On every ``up`` the bucket is ensured with public read and checked the way a browser uses it: an
anonymous GET of an uploaded object must return its bytes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import httpx
from pydantic import AnyHttpUrl, SecretStr

from services.common.blobstore import ensure_bucket, make_s3_client
from services.common.settings import S3Settings
from services.devstack.component import Answer, Component
from services.devstack.errors import DevStackError, Progress
from services.devstack.host import ensure_command
from services.devstack.maven import JAVA_PACKAGE, infra_dir, maven_libs, pom_property
from services.devstack.settings import DevStackSettings

# Neither server checks credentials; fixed ones keep `forgeline dev env` output stable.
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


def s3_component(settings: DevStackSettings) -> S3Endpoint:
    """The S3 server ``settings.s3_server`` names."""
    return S3ProxyComponent(settings) if settings.s3_server == "s3proxy" else MotoComponent(settings)


class S3Endpoint(Component):
    """What both S3 servers share: the address, the readiness check and the public bucket."""

    name = "s3"

    def __init__(self, settings: DevStackSettings) -> None:
        super().__init__(state_dir=settings.state_dir, host=settings.host, port=settings.s3_port)
        self.settings = settings

    @property
    def endpoint(self) -> str:
        return endpoint_url(self.settings)

    @property
    def data_dir(self) -> Path:
        """S3Proxy's objects; listed for moto too, so ``dev reset`` clears them whichever server runs."""
        return self.process.dir / "data"

    def data_paths(self) -> list[Path]:
        return [self.data_dir]

    def ports(self) -> dict[int, str]:
        return {self.port: self.settings.env_name("s3_port")}

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


def s3proxy_pom() -> Path:
    return infra_dir() / "s3proxy" / "pom.xml"


def s3proxy_version() -> str:
    """The S3Proxy version pinned in ``infra/local/s3proxy/pom.xml``."""
    return pom_property(s3proxy_pom(), "s3proxy.version")


def render_s3proxy_properties(settings: DevStackSettings, data_dir: Path, *, check_signatures: bool = False) -> str:
    """S3Proxy's configuration: the filesystem backend under ``data_dir``, on this stack's address.

    ``check_signatures``: refuse requests not signed (SigV2 or SigV4) with the stack's key, as AWS and
    R2 do. The stack itself never runs so: anonymous reads, what a CDN does, are refused then too.
    """
    auth = ({"s3proxy.authorization": "aws-v2-or-v4", "s3proxy.identity": ACCESS_KEY_ID,
             "s3proxy.credential": SECRET_ACCESS_KEY} if check_signatures else {"s3proxy.authorization": "none"})
    props = {
        "s3proxy.endpoint": endpoint_url(settings),
        **auth,
        "jclouds.provider": "filesystem",
        "jclouds.filesystem.basedir": str(data_dir),
    }
    header = "# Written by `forgeline dev up` from DevStackSettings; edits are overwritten.\n"
    return header + "".join(f"{key}={value}\n" for key, value in props.items())


class S3ProxyComponent(S3Endpoint):
    marker = "org.gaul.s3proxy.Main"
    start_timeout = 60.0  # ~2 s normally; a cold JVM on a busy machine is slower
    check_signatures = False  # see render_s3proxy_properties

    @property
    def properties_path(self) -> Path:
        return self.process.dir / "s3proxy.conf"

    def prepare(self, progress: Progress) -> list[str]:
        java = ensure_command("java", JAVA_PACKAGE, progress)
        version = s3proxy_version()
        libs = maven_libs(
            self.settings.cache_dir / f"s3proxy-{version}" / "libs",
            pom=s3proxy_pom(), what=f"S3Proxy {version}", size="~55 MB, one jar", expect="s3proxy-", progress=progress,
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.properties_path.write_text(render_s3proxy_properties(self.settings, self.data_dir,
                                                                   check_signatures=self.check_signatures))
        return [java, f"-Xmx{self.settings.s3_heap}", "-Djava.awt.headless=true", "-cp", f"{libs}/*",
                self.marker, "--properties", str(self.properties_path)]


class MotoComponent(S3Endpoint):
    marker = "moto.server"

    def prepare(self, progress: Progress) -> list[str]:
        # Server mode needs moto's [server] extra (flask, flask-cors), not just moto.
        missing = [m for m in ("moto", "flask", "flask_cors") if importlib.util.find_spec(m) is None]
        if missing:
            raise DevStackError(
                f"the S3 endpoint needs moto's server mode ({', '.join(missing)} not importable); "
                "run `pip install 'forgeline[dev]'` (or `pip install 'moto[server]'`), or use S3Proxy "
                "(unset FORGELINE_DEV_S3_SERVER)."
            )
        self.process.dir.mkdir(parents=True, exist_ok=True)
        # The same interpreter as ours, so it finds the moto we just checked for.
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
