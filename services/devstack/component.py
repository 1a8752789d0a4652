"""A server of the dev stack: one background process plus how to prepare, check and use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.devstack.errors import DevStackError, Progress, silent
from services.devstack.process import (
    BackgroundProcess,
    port_answers,
    port_free,
    wait_until,
)


@dataclass(frozen=True)
class Answer:
    """Result of a protocol-level check: did the server answer a real request, and what it said."""

    ok: bool
    detail: str


@dataclass(frozen=True)
class ComponentStatus:
    """One component as ``forgeline dev status`` shows it."""

    name: str
    address: str
    running: bool  # the process we started is alive
    answers: bool  # something at ``address`` answered a real protocol request
    pid: int | None
    log_path: Path
    detail: str


class Component:
    """A server of the dev stack: one background process plus how to prepare, check and use it.

    Subclasses fill in the hooks (``ports``, ``prepare``, ``check``, optionally ``provision``);
    the lifecycle below is shared so every component starts, waits and stops the same way.
    """

    name: str = ""
    marker: str = ""  # a string in the running process's command line (ownership check)
    start_timeout: float = 30.0
    stop_timeout: float = 10.0

    def __init__(self, *, state_dir: Path, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.process = BackgroundProcess(self.name, state_dir)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self.address!r})"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- hooks

    def ports(self) -> dict[int, str]:
        """Every port the server binds → the setting that changes it (for "port taken" errors)."""
        raise NotImplementedError

    def prepare(self, progress: Progress) -> list[str]:
        """Install, download or initialise whatever the server needs; return its command line."""
        raise NotImplementedError

    def check(self) -> Answer:
        """A real protocol request to the server, bounded to a few seconds. Never raises."""
        raise NotImplementedError

    def provision(self, progress: Progress) -> None:
        """Idempotent setup once the server answers (e.g. create a bucket); runs on every ``up``."""

    def data_paths(self) -> list[Path]:
        """What the server keeps across restarts, which ``dev reset`` deletes."""
        return []

    # -- lifecycle

    def say(self, progress: Progress) -> Progress:
        """``progress`` with this component's name in front of each message."""
        return lambda message: progress(f"{self.name}: {message}")

    def running(self) -> bool:
        return self.process.is_running()

    def answer(self) -> Answer:
        # A TCP probe first: when nothing listens the protocol client need not time out.
        if not port_answers(self.host, self.port):
            return Answer(False, f"nothing listens on {self.address}")
        return self.check()

    def answers(self) -> bool:
        return self.answer().ok

    def start(self, progress: Progress = silent) -> bool:
        """Make the server run and answer; True if this call started it, False if it already ran."""
        launched = self.launch(progress)
        self.ready(progress, launched=launched)
        return launched

    def launch(self, progress: Progress = silent) -> bool:
        """Start the process without waiting for it to answer; False if ours was running already.

        Servers that only answer together (the nodes of a Kafka quorum) are all launched, then
        each is waited for with ``ready``.
        """
        say = self.say(progress)
        pid = self.process.pid()
        if pid is not None:
            return False
        if self.process.clear_stale():
            say(f"removed a stale pid file ({self.process.pid_path})")
        self.check_ports()
        argv = self.prepare(say)
        pid = self.process.start(argv, marker=self.marker)
        say(f"started (pid {pid}); waiting for it to answer at {self.address}…")
        return True

    def ready(self, progress: Progress = silent, *, launched: bool) -> None:
        """Wait until the server answers, then provision it; a server this call launched is stopped on failure."""
        say = self.say(progress)
        if not launched:
            if self.answers():
                say(f"already running (pid {self.process.pid()}) at {self.address}")
            else:  # e.g. another `up` is still starting it
                say(f"running (pid {self.process.pid()}) but not answering yet")
                self._wait_ready(say)
            self.provision(say)
            return
        try:
            took = self._wait_ready(say)
            self.provision(say)
        except BaseException:
            self.process.stop(timeout=self.stop_timeout)  # no half-started server left behind
            raise
        say(f"ready at {self.address} in {took:.1f}s ({self.answer().detail}); log: {self.process.log_path}")

    def check_ports(self) -> None:
        """Raise if a port this server needs is held by a process this stack did not start."""
        for port, setting in self.ports().items():
            if not port_free(self.host, port):
                raise DevStackError(
                    f"{self.name}: port {port} on {self.host} is taken by another process (not one this "
                    f"stack started). Stop that process, or set {setting} to a free port."
                )

    def _wait_ready(self, say: Progress) -> float:
        return wait_until(
            self.answers,
            what=f"{self.name} to answer at {self.address}",
            timeout=self.start_timeout,
            progress=say,
            log_path=self.process.log_path,
            alive=self.process.is_running,
        )

    def stop(self, progress: Progress = silent) -> bool:
        """Stop the server if this stack started it; True if it was running."""
        say = self.say(progress)
        pid = self.process.pid()
        if pid is None:
            if self.process.clear_stale():
                say(f"removed a stale pid file ({self.process.pid_path})")
            if port_answers(self.host, self.port):
                say(f"not started by this stack; the process on {self.address} was left alone")
            return False
        say(f"stopping (pid {pid})…")
        self.process.stop(timeout=self.stop_timeout, progress=say)
        say("stopped")
        return True

    def status(self) -> ComponentStatus:
        pid = self.process.pid()
        listening = port_answers(self.host, self.port)
        answer = self.check() if listening else Answer(False, f"nothing listens on {self.address}")
        if pid is not None:
            detail = answer.detail if answer.ok else f"running but not answering: {answer.detail}"
        elif answer.ok:
            detail = f"answered by a process this stack did not start ({answer.detail})"
        elif listening:
            detail = f"stopped; a process this stack did not start holds {self.address} ({answer.detail})"
        else:
            detail = "stopped"
        return ComponentStatus(
            name=self.name,
            address=self.address,
            running=pid is not None,
            answers=answer.ok,
            pid=pid,
            log_path=self.process.log_path,
            detail=detail,
        )
