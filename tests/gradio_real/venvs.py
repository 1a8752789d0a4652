"""One virtualenv per Gradio major version, cached outside the repo like the Kafka jars.

Each real ``gradio`` release pins its own FastAPI, pydantic and huggingface_hub, which conflict
with the project's and with each other, so each lives in ``~/.cache/forgeline/gradio-<version>/``
(``FORGELINE_DEV_CACHE_DIR`` moves it). The first use creates it with pip (a minute or two each);
a ``.installed`` marker, written last, makes later uses instant.

``python -m tests.gradio_real.venvs`` builds all of them with progress output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

# the newest release of each major version, and what it needs besides (Gradio 4 does not start
# with huggingface_hub 1.x, pydantic 2.11+ or FastAPI past 0.115)
VERSIONS: dict[str, tuple[str, ...]] = {
    "4.44.1": ("huggingface_hub<1", "pydantic<2.11", "fastapi==0.115.*"),
    "5.50.0": (),
    "6.31.0": (),
}


class VenvError(RuntimeError):
    """A version's virtualenv could not be created (no registry, no wheel for this Python…)."""


def cache_dir() -> Path:
    return Path(os.environ.get("FORGELINE_DEV_CACHE_DIR", "~/.cache/forgeline")).expanduser()


def venv_python(version: str) -> Path:
    return cache_dir() / f"gradio-{version}" / "bin" / "python"


def ensure_venv(version: str, progress: Callable[[str], None] = print) -> Path:
    """The Python of the version's virtualenv, created on first use."""
    root = cache_dir() / f"gradio-{version}"
    marker = root / ".installed"
    if marker.exists():
        return root / "bin" / "python"
    if root.exists():
        shutil.rmtree(root)  # a half-made one from an interrupted run
    started = time.monotonic()
    progress(f"gradio {version}: creating {root} (one time)")
    _run([sys.executable, "-m", "venv", str(root)], version)
    packages = [f"gradio=={version}", *VERSIONS[version]]
    progress(f"gradio {version}: pip install {' '.join(packages)}")
    _run([str(root / "bin" / "python"), "-m", "pip", "install", "--quiet", "--progress-bar", "off", *packages], version)
    marker.write_text(f"{' '.join(packages)}\n")
    progress(f"gradio {version}: ready in {time.monotonic() - started:.0f}s")
    return root / "bin" / "python"


def _run(command: list[str], version: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise VenvError(f"gradio {version}: `{' '.join(command[:4])} …` failed ({result.returncode}):\n{tail}")


if __name__ == "__main__":
    for name in sys.argv[1:] or VERSIONS:
        ensure_venv(name)
