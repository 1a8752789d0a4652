"""The socket ingest listens on: shared only when there are several workers, and no Nagle delay."""

from __future__ import annotations

import asyncio
import socket

import pytest

from services.devstack.process import free_ports
from services.ingest.settings import IngestSettings
from services.ingest.workers import listening_socket


def test_workers_share_the_port_and_a_lone_ingest_does_not() -> None:
    (port,) = free_ports(1)
    first = listening_socket(IngestSettings(port=port, workers=2))
    second = listening_socket(IngestSettings(port=port, workers=2, worker_index=1))
    first.listen()
    second.listen()
    try:
        with pytest.raises(RuntimeError, match=rf"could not listen on 127.0.0.1:{port}"):
            listening_socket(IngestSettings(port=port))  # a second lone ingest must not slip in beside them
    finally:
        first.close()
        second.close()


async def test_connections_get_tcp_nodelay() -> None:
    (port,) = free_ports(1)
    sock = listening_socket(IngestSettings(port=port))
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_connect(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=sock)
    async with server:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(accepted, 10) != 0
        writer.close()
