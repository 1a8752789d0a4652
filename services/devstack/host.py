"""The host machine: foreground commands with live output, installing what is missing, file locks."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import queue
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from services.devstack.errors import DevStackError, Progress
from services.devstack.process import LOG_TAIL_LINES


@contextlib.contextmanager
def exclusive_lock(path: Path, *, progress: Progress, waiting: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); say ``waiting`` if we must wait.

    The kernel drops the lock when its holder dies, so a crash never leaves it stuck.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(waiting)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- foreground commands


def run_streaming(
    argv: Sequence[str],
    *,
    progress: Progress,
    show: Callable[[str], str | None] = lambda line: line,
    log_path: Path | None = None,
    heartbeat: str = "still running",
    heartbeat_every: float = 5.0,
    cwd: Path | None = None,
) -> None:
    """Run a command in the foreground, passing its output lines through ``show`` to ``progress``.

    Long silent stretches produce "<heartbeat>… Ns" so the user knows it is not stuck. The full
    output goes to ``log_path``; a failure raises with the last lines quoted.
    """
    lines: queue.Queue[str | None] = queue.Queue()
    recent: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    log = log_path.open("w", encoding="utf-8") if log_path else None
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            cwd=cwd,
        )
    except OSError as exc:
        if log:
            log.close()
        raise DevStackError(f"cannot run {argv[0]}: {exc}") from exc

    def pump() -> None:  # a thread, so the main loop can print heartbeats between lines
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, name=f"output-of-{Path(argv[0]).name}", daemon=True)
    reader.start()
    started = time.monotonic()
    last_output = started
    try:
        while True:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                now = time.monotonic()
                if now - last_output >= heartbeat_every:
                    progress(f"{heartbeat}… {now - started:.0f}s")
                    last_output = now
                continue
            if line is None:
                break
            recent.append(line)
            if log:
                log.write(line + "\n")
            message = show(line)
            if message:
                progress(message)
                last_output = time.monotonic()
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C, an exception in progress): leave nothing behind
            proc.kill()
            proc.wait()
        if log:
            log.close()
    if code != 0:
        where = f" (full output: {log_path})" if log_path else ""
        tail = "\n".join(f"    {line}" for line in recent)
        raise DevStackError(f"`{shlex.join(argv)}` failed with exit code {code}{where}:\n{tail}")


def ensure_commands(required: Mapping[str, str], progress: Progress) -> dict[str, str]:
    """Find each command (``{"mvn": "maven"}``: command → Debian package that provides it).

    Missing ones are installed with apt-get when we are root on a Debian-like system (one
    ``apt-get install`` for all of them); otherwise the error says what to install.
    """
    found = {command: shutil.which(command) for command in required}
    missing = [command for command, path in found.items() if path is None]
    if missing:
        packages = sorted({required[command] for command in missing})
        apt_get = shutil.which("apt-get")
        if os.geteuid() != 0 or apt_get is None:
            raise DevStackError(
                f"{', '.join(missing)} not found on PATH. Install it, e.g. "
                f"`sudo apt-get install -y {' '.join(packages)}` on Debian/Ubuntu, then retry."
            )
        progress(f"{', '.join(missing)} not found; installing {' '.join(packages)} with apt-get…")
        # `env` sets the variable for apt only; debconf must never wait for an answer.
        noninteractive = ["env", "DEBIAN_FRONTEND=noninteractive"]
        run_streaming([*noninteractive, apt_get, "update"], progress=progress, heartbeat="apt-get update")
        run_streaming(
            [*noninteractive, apt_get, "install", "-y", "--no-install-recommends", *packages],
            progress=progress,
            heartbeat="apt-get install",
        )
        found = {command: shutil.which(command) for command in required}
        still = [command for command, path in found.items() if path is None]
        if still:
            raise DevStackError(f"installed {' '.join(packages)} but {', '.join(still)} is still not on PATH")
    return {command: path for command, path in found.items() if path is not None}


def ensure_command(command: str, debian_package: str, progress: Progress) -> str:
    """The path of ``command``, installing ``debian_package`` first if needed (see ``ensure_commands``)."""
    return ensure_commands({command: debian_package}, progress)[command]

