"""Small helpers several test modules share."""

from __future__ import annotations

import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its exit status is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


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
