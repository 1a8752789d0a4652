"""A local three-master Redis Cluster, from Debian's ``redis-server`` (and ``redis-cli`` to join it).

Private to the tests that ask for it: its own ports (each with its cluster bus port, +10000) and
its own folder, stopped when they end. ``redis-tools`` (``redis-cli``) is installed with apt-get
when it is missing, as the dev stack installs ``redis-server``.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.devstack.host import ensure_commands

__all__ = ["redis_cluster"]


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    """``count`` ports whose cluster bus ports (+10000) are free too."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20_000, 29_000)
        if port not in chosen and _free(port) and _free(port + 10_000):
            chosen.append(port)
    return chosen


def _wait(check, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"the test Redis Cluster: {what} within {timeout_s:.0f} s")


@contextmanager
def redis_cluster(folder: Path, *, masters: int = 3) -> Iterator[list[int]]:
    """Start ``masters`` cluster nodes on loopback, join them into one cluster; yields their ports."""
    tools = ensure_commands({"redis-server": "redis-server", "redis-cli": "redis-tools"}, progress=print)
    server, cli = tools["redis-server"], tools["redis-cli"]
    ports = _ports(masters)
    nodes: list[subprocess.Popen] = []
    try:
        for port in ports:
            node_dir = folder / str(port)
            node_dir.mkdir(parents=True)
            log = (node_dir / "redis.log").open("w")
            nodes.append(subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                 "--save", "", "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT))

        def answering() -> bool:
            return all(subprocess.run([cli, "-p", str(p), "ping"], capture_output=True, text=True).stdout.strip()
                       == "PONG" for p in ports)

        _wait(answering, "the nodes did not answer PING")
        created = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                                  "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}{created.stderr[-2000:]}")

        def ok() -> bool:
            return all("cluster_state:ok" in subprocess.run([cli, "-p", str(p), "cluster", "info"],
                                                             capture_output=True, text=True).stdout for p in ports)

        _wait(ok, "cluster_state did not become ok on every node")
        yield ports
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
