"""Real ``gradio`` servers on loopback, one per major version, each from its cached virtualenv.

``running_spaces()`` creates the missing virtualenvs (``venvs.py``), starts ``space_app.py`` under
each version on a free port, waits for its ``/config`` and stops them all on exit. A version that
cannot be installed or does not start is an error naming it and quoting its output.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.devstack.process import free_ports
from tests.gradio_real.venvs import VERSIONS, ensure_venv

APP = Path(__file__).with_name("space_app.py")
API_NAME = "generate"
START_TIMEOUT_S = 180  # importing gradio takes 5–20 s per server on a busy 2-core machine


@dataclass(frozen=True)
class RealSpace:
    version: str
    url: str
    calls_log: Path

    def calls(self) -> list[dict]:
        """Every call's inputs as the Space's function received them."""
        if not self.calls_log.exists():
            return []
        return [json.loads(line) for line in self.calls_log.read_text().splitlines() if line]


@contextmanager
def running_spaces(workdir: Path, progress=print) -> Iterator[dict[str, RealSpace]]:
    pythons = {version: ensure_venv(version, progress) for version in VERSIONS}
    ports = free_ports(len(pythons))
    env = os.environ | {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1",
                        "no_proxy": "127.0.0.1", "GRADIO_TEMP_DIR": str(workdir / "files")}
    with ExitStack() as stack:
        spaces, processes = {}, {}
        for (version, python), port in zip(pythons.items(), ports, strict=True):
            log = workdir / f"gradio-{version}.log"
            space = RealSpace(version, f"http://127.0.0.1:{port}", workdir / f"calls-{version}.jsonl")
            with log.open("w") as out:
                process = subprocess.Popen([str(python), str(APP), str(port), str(space.calls_log)], env=env,
                                           stdout=out, stderr=subprocess.STDOUT)
            stack.callback(_stop, process)
            spaces[version], processes[version] = space, (process, log)
        started = time.monotonic()
        for version, space in spaces.items():
            _wait_ready(space, *processes[version], started)
        progress(f"gradio servers up in {time.monotonic() - started:.0f}s: "
                 + ", ".join(f"{v} at {s.url}" for v, s in spaces.items()))
        yield spaces


def _wait_ready(space: RealSpace, process: subprocess.Popen, log: Path, started: float) -> None:
    while time.monotonic() - started < START_TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"gradio {space.version} exited ({process.returncode}):\n{_tail(log)}")
        try:
            if httpx.get(f"{space.url}/config", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"gradio {space.version} did not answer /config within {START_TIMEOUT_S}s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-20:])


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
