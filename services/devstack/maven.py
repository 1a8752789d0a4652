"""Jars from Maven Central, resolved once into the cache: the dev stack's Kafka broker and S3Proxy.

Each POM under ``infra/local/`` pins one server's version. Maven copies its runtime dependencies
into ``<cache_dir>/<name>-<version>/libs``; later starts reuse that folder without running Maven.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from services.devstack.errors import DevStackError, Progress
from services.devstack.host import ensure_commands, exclusive_lock, run_streaming

POM_NAMESPACE = "http://maven.apache.org/POM/4.0.0"
#: Written last into a finished download; a libs folder without it is never used.
LIBS_COMPLETE_MARKER = ".forgeline-complete"
JAVA_PACKAGE = "default-jre-headless"
MAVEN_PACKAGE = "maven"


def infra_dir() -> Path:
    """``infra/local/`` of this checkout (the POMs and the broker's log4j2.properties)."""
    path = Path(__file__).resolve().parents[2] / "infra" / "local"
    if not (path / "pom.xml").is_file():
        raise DevStackError(
            f"{path / 'pom.xml'} is missing; the dev stack runs from a Forgeline source checkout "
            "(git clone, then `pip install -e '.[dev]'`)."
        )
    return path


def pom_property(pom: Path, name: str) -> str:
    """A ``<properties>`` value of ``pom`` (where each server's version is pinned)."""
    element = ET.parse(pom).getroot().find(f"{{{POM_NAMESPACE}}}properties/{{{POM_NAMESPACE}}}{name}")
    value = (element.text or "").strip() if element is not None else ""
    if not value:
        raise DevStackError(f"{pom} has no <properties><{name}>; put the version there")
    return value


_DOWNLOADED = re.compile(r"Downloaded from \S+: (?P<url>\S+) \((?P<size>[^)]*)\)")


def _maven_line(line: str) -> str | None:
    """Which Maven output lines the user sees: finished jar downloads and errors."""
    match = _DOWNLOADED.search(line)
    if match and match["url"].endswith(".jar"):
        size = match["size"].split(" at ")[0]
        return f"downloaded {match['url'].rsplit('/', 1)[-1]} ({size})"
    if line.startswith("[ERROR]"):
        return line
    return None


def run_maven(mvn: str, pom: Path, output_dir: Path, *, log_path: Path, progress: Progress, what: str) -> None:
    """Copy the runtime dependencies of ``pom`` (downloading them as needed) into ``output_dir``."""
    run_streaming(
        [
            mvn,
            "-B",
            "-Dstyle.color=never",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={output_dir}",
            "-DincludeScope=runtime",
            "-f",
            str(pom),
        ],
        progress=progress,
        show=_maven_line,
        log_path=log_path,
        heartbeat=f"still downloading the {what} jars",
    )


def maven_libs(libs: Path, *, pom: Path, what: str, size: str, expect: str, progress: Progress) -> Path:
    """``libs`` filled with the jars of ``pom``, downloading them on the first call.

    ``expect`` is the file-name start of the jar that must be among them (a sanity check on
    Maven's output); ``what`` and ``size`` go into the progress lines ("Kafka 4.3.1", "~43 MB").
    """
    if (libs / LIBS_COMPLETE_MARKER).is_file():
        return libs
    mvn = ensure_commands({"java": JAVA_PACKAGE, "mvn": MAVEN_PACKAGE}, progress)["mvn"]
    home = libs.parent
    home.mkdir(parents=True, exist_ok=True)
    # Two `up`s on a cold machine (e.g. a test run and a shell) must not both download.
    waiting = f"another process is downloading the {what} jars; waiting for it…"
    with exclusive_lock(home / ".download.lock", progress=progress, waiting=waiting):
        if (libs / LIBS_COMPLETE_MARKER).is_file():  # the other process finished it
            return libs
        progress(f"first start: downloading the {what} jars with Maven ({size}) into {home}…")
        # Download beside the target and rename when complete: an interrupted download is
        # never mistaken for a whole one.
        partial = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=home))
        try:
            try:
                run_maven(mvn, pom, partial, log_path=home / "maven.log", progress=progress, what=what)
            except DevStackError as exc:
                raise DevStackError(
                    f"{exc}\nMaven could not fetch the {what} jars. Check that Maven Central (repo1.maven.org) is "
                    "reachable (a proxy goes in ~/.m2/settings.xml), then run `forgeline dev up` again."
                ) from exc
            jars = sorted(p.name for p in partial.glob("*.jar"))
            if not any(name.startswith(expect) for name in jars):
                raise DevStackError(f"Maven finished but copied no {expect}*.jar; see {home / 'maven.log'}")
            partial.chmod(0o755)  # mkdtemp makes it private; the jars are not secret
            (partial / LIBS_COMPLETE_MARKER).write_text(json.dumps({"pom": str(pom), "jars": jars}) + "\n")
            if libs.exists():  # an incomplete folder without the marker, e.g. made by hand
                shutil.rmtree(libs)
            partial.rename(libs)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        progress(f"{what}: {len(jars)} jar(s) ready in {libs}")
    return libs
