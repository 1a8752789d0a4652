"""Background processes owned by the dev stack: start detached, find again, stop cleanly.

Each process has a folder ``<state_dir>/<name>/`` holding ``<name>.log`` (stdout and stderr)
and ``<name>.pid``. The pid file records the pid *and* the process's kernel start time and a
marker expected in its command line, so a pid reused by an unrelated process after a reboot or
a crash is never mistaken for ours — and never signalled.

Linux only: ownership checks read ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.devstack.errors import DevStackError, Progress, silent

LOG_TAIL_LINES = 20


# --------------------------------------------------------------------------- /proc helpers


@dataclass(frozen=True)
class _ProcStat:
    state: str
    pgrp: int
    start_time: int  # clock ticks since boot; with the pid it identifies one process for ever


def _proc_stat(pid: int) -> _ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return _ProcStat(state=fields[0], pgrp=int(fields[2]), start_time=int(fields[19]))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _reap(pid: int) -> None:
    # A child of this Python process stays a zombie until waited for; zombies look alive to kill(0).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat.pgrp == pgid and stat.state != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


# --------------------------------------------------------------------------- ports


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``.

    A connection to a loopback port in the ephemeral range that nobody listens on can be made to
    itself (TCP simultaneous open, when the kernel picks that same port as the source): that is
    nobody answering, not a process holding the port.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            return sock.getsockname() != sock.getpeername()
    except OSError:
        return False


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nobody listens on (each socket is held until all are bound)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_run(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive loopback ports nobody listens on (a cluster's brokers +2 apart)."""
    for _ in range(attempts):
        (first,) = free_ports(1)
        if first + count < 65536 and all(port_free("127.0.0.1", first + i) for i in range(count)):
            return first
    raise DevStackError(f"found no {count} consecutive free ports on 127.0.0.1 in {attempts} tries")


def port_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now.

    SO_REUSEADDR, as servers set it, so a port in TIME_WAIT from a previous run counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------- logs and waiting


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, indented for an error message."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return "    (no log file)"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "    (log is empty)"


def wait_until(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    progress: Progress,
    log_path: Path,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.2,
    report_every: float = 5.0,
) -> float:
    """Poll ``check`` until it is true; return the seconds it took.

    Reports "still waiting" every ``report_every`` seconds. Fails fast when ``alive`` says the
    process died, and after ``timeout``; either error names the log and quotes its tail.
    """
    started = time.monotonic()
    next_report = started + report_every
    while True:
        if check():
            return time.monotonic() - started
        now = time.monotonic()
        if alive is not None and not alive():
            raise DevStackError(
                f"{what}: the process exited during startup. Last lines of {log_path}:\n{log_tail(log_path)}"
            )
        if now - started >= timeout:
            raise DevStackError(
                f"{what} did not happen within {timeout:.0f}s. Last lines of {log_path}:\n{log_tail(log_path)}"
            )
        if now >= next_report:
            progress(f"still waiting for {what}… {now - started:.0f}s")
            next_report += report_every
        time.sleep(interval)


# --------------------------------------------------------------------------- background processes


@dataclass(frozen=True)
class ProcessRecord:
    """What the pid file says about the process we started."""

    pid: int
    start_time: int
    marker: str
    argv: list[str]


class BackgroundProcess:
    """One detached process named ``name`` whose files live in ``<state_dir>/<name>/``."""

    def __init__(self, name: str, state_dir: Path) -> None:
        self.name = name
        self.dir = state_dir / name
        self.log_path = self.dir / f"{name}.log"
        self.pid_path = self.dir / f"{name}.pid"

    def __repr__(self) -> str:
        return f"BackgroundProcess({self.name!r}, pid_path={str(self.pid_path)!r})"

    # -- finding it again

    def record(self) -> ProcessRecord | None:
        """The pid file's content, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads(self.pid_path.read_text())
            return ProcessRecord(
                pid=int(data["pid"]),
                start_time=int(data["start_time"]),
                marker=str(data["marker"]),
                argv=[str(a) for a in data["argv"]],
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return ProcessRecord(pid=0, start_time=-1, marker="", argv=[])  # garbage: stale by definition

    @staticmethod
    def _matches(record: ProcessRecord) -> bool:
        if record.pid <= 0:
            return False
        stat = _proc_stat(record.pid)
        if stat is None or stat.state == "Z":
            _reap(record.pid)
            return False
        # Same pid *and* same start time is the same process; the marker guards against a pid
        # file copied from another machine or hand-edited.
        return stat.start_time == record.start_time and record.marker in _cmdline(record.pid)

    def pid(self) -> int | None:
        """Our process's pid if it is alive, else None."""
        record = self.record()
        return record.pid if record is not None and self._matches(record) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def clear_stale(self) -> bool:
        """Remove a pid file whose process is gone (or is someone else's); True if one was removed."""
        record = self.record()
        if record is None or self._matches(record):
            return False
        self.pid_path.unlink(missing_ok=True)
        return True

    # -- starting and stopping

    def start(
        self,
        argv: Sequence[str],
        *,
        marker: str,
        env: Mapping[str, str] | None = None,
        settle: float = 2.0,
    ) -> int:
        """Start ``argv`` detached (own session, so terminal signals and our exit leave it alone).

        ``marker`` must appear in the process's command line once it runs (e.g. ``kafka.Kafka``);
        it is stored in the pid file for the ownership check. Returns the pid.
        """
        if self.is_running():
            raise DevStackError(f"{self.name} is already running (pid {self.pid()}); stop it first")
        self.clear_stale()
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(f"\n=== {stamp} forgeline devstack starts {self.name}: {shlex.join(argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.dir,
                    env=dict(env) if env is not None else None,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise DevStackError(f"cannot start {self.name} (`{shlex.join(argv)}`): {exc}") from exc
        stat = _proc_stat(proc.pid)
        if stat is None:  # exited (and was reaped) already
            proc.wait()
            raise DevStackError(
                f"{self.name} exited at once. Last lines of {self.log_path}:\n{log_tail(self.log_path)}"
            )
        record = ProcessRecord(pid=proc.pid, start_time=stat.start_time, marker=marker, argv=list(argv))
        tmp = self.pid_path.with_suffix(".pid.tmp")
        tmp.write_text(json.dumps(asdict(record)) + "\n")
        tmp.replace(self.pid_path)  # atomic: a reader sees no pid file or a whole one
        # Between fork and exec the command line is still ours; wait until the program is in place.
        deadline = time.monotonic() + settle
        while marker not in _cmdline(proc.pid):
            if proc.poll() is not None:
                self.pid_path.unlink(missing_ok=True)
                raise DevStackError(
                    f"{self.name} exited at once (code {proc.returncode}). "
                    f"Last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self.stop(timeout=5)
                raise DevStackError(f"{self.name} started but its command line lacks {marker!r}: {_cmdline(proc.pid)}")
            time.sleep(0.02)
        return proc.pid

    def kill(self, *, timeout: float = 5.0) -> int | None:
        """SIGKILL our process group at once, as a crash or the OOM killer would; the pid, or None if
        ours was not running. Waits until the group is gone and removes the pid file, so ``start``
        can run it again at once."""
        return self.stop(hard=True, timeout=timeout)

    def stop(self, *, timeout: float = 10.0, progress: Progress = silent, hard: bool = False) -> int | None:
        """SIGTERM our process group, SIGKILL it after ``timeout`` seconds (at once if ``hard``); remove the pid file.

        Returns the pid that was stopped, or None when ours was not running (a stale pid file is
        removed; a process that is not ours is never signalled).
        """
        record = self.record()
        if record is None or not self._matches(record):
            self.clear_stale()
            return None
        pid = record.pid
        # start_new_session made it a group leader: signal the group so helpers it spawned go too.
        try:
            pgid: int | None = pid if os.getpgid(pid) == pid else None
        except ProcessLookupError:  # exited just now
            pgid = None

        def gone() -> bool:
            _reap(pid)
            stat = _proc_stat(pid)
            leader_gone = stat is None or stat.state == "Z" or stat.start_time != record.start_time
            return leader_gone and (pgid is None or not _group_alive(pgid))

        def send(sig: signal.Signals) -> None:
            if pgid is not None:
                _signal_group(pgid, sig)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

        first = signal.SIGKILL if hard else signal.SIGTERM
        send(first)
        began = time.monotonic()
        deadline = began + timeout
        next_report = time.monotonic() + 5.0
        while not gone():
            now = time.monotonic()
            if now >= deadline:
                progress(f"{self.name} (pid {pid}) still runs {now - began:.0f}s after {first.name}; "
                         "sending SIGKILL")
                send(signal.SIGKILL)
                kill_deadline = time.monotonic() + 5.0
                while not gone():
                    if time.monotonic() >= kill_deadline:
                        raise DevStackError(f"{self.name} (pid {pid}) survived SIGKILL; check `ps -g {pgid or pid}`")
                    time.sleep(0.1)
                break
            if now >= next_report:
                progress(f"waiting for {self.name} (pid {pid}) to shut down… {now - began:.0f}s")
                next_report += 5.0
            time.sleep(0.1)
        self.pid_path.unlink(missing_ok=True)
        return pid

    # -- failure injection (the chaos suite, failure tests)

    def signal(self, sig: signal.Signals) -> int:
        """Send ``sig`` to our process group, e.g. SIGSTOP then SIGCONT to freeze a server; returns the pid."""
        pid = self.pid()
        if pid is None:
            raise DevStackError(f"{self.name} is not running")
        _signal_group(pid, sig)
        return pid
