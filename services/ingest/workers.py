"""More than one ingest process on one port: each a whole ingest, the kernel spreading connections.

With ``FORGELINE_INGEST_WORKERS=N`` the process started by ``forgeline run ingest`` listens with
``SO_REUSEPORT`` and starts N - 1 siblings (the same command, ``FORGELINE_INGEST_WORKER_INDEX``
1…N-1) that do the same; Linux hands each new connection to one of them. Python runs one core's
worth of work per process, so this is how one pod uses more than one core. The siblings share the
process group (a group signal stops them all) and get the first process's SIGTERM when it stops.
Each keeps its own ``/metrics``; everything else a worker shows comes from Redis and Kafka.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

from services.ingest.settings import IngestSettings


def listening_socket(settings: IngestSettings) -> socket.socket:
    """The socket to serve on; shared by every worker through ``SO_REUSEPORT`` when there are several."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of a socket that names it,
    # and without it a response's second write waits out the client's 40 ms delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.workers > 1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"ingest could not listen on {settings.host}:{settings.port} ({exc.strerror})") from None
    sock.set_inheritable(False)
    return sock


async def start_siblings(settings: IngestSettings) -> list[asyncio.subprocess.Process]:
    """The first worker starts the others (none when it is one of them, or alone)."""
    if settings.worker_index != 0:
        return []
    return [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "run", "ingest",
        env=os.environ | {"FORGELINE_INGEST_WORKERS": str(settings.workers), "FORGELINE_INGEST_WORKER_INDEX": str(i)},
    ) for i in range(1, settings.workers)]


async def stop_siblings(siblings: list[asyncio.subprocess.Process]) -> None:
    for sibling in siblings:
        if sibling.returncode is None:
            sibling.terminate()
    await asyncio.gather(*(sibling.wait() for sibling in siblings))
