"""aiokafka issue #551 on the real client: a start against a broker still starting up never ends.

A broker that is starting up (a fresh cluster, a restart) can answer the client's first Metadata
request with no brokers in it. aiokafka then keeps only that bootstrap connection, to ask again
later; when the broker drops it (it restarts once more), the client knows no node at all, never
goes back to the bootstrap servers, and an idempotent producer's ``start()`` asks "node None" for
a producer id for good ("Cannot send InitProducerIdRequest to None: NodeNotReadyError"), even
once the broker is up again at the same address.

Here the broker is a small fake on 127.0.0.1 that speaks just enough of the Kafka protocol, with
aiokafka's own protocol classes: its first connection gets an empty Metadata answer and is then
dropped; every later connection finds a healthy one-node cluster that hands out producer ids.
The clients are real aiokafka, and so is the way the services start them (``start_within``,
``Infra``). No real broker is needed, so these tests carry no ``integration`` marker.

Should aiokafka ever fix #551, the first test fails: ``start_within`` may then be dropped.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from io import BytesIO
from types import SimpleNamespace
from typing import Self

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol import API_KEYS
from aiokafka.protocol.admin import ApiVersionRequest, ApiVersionResponse_v0
from aiokafka.protocol.api import ResponseHeader_v0
from aiokafka.protocol.metadata import MetadataRequest, MetadataResponse_v0
from aiokafka.protocol.struct import Struct
from aiokafka.protocol.transaction import InitProducerIdRequest, InitProducerIdResponse_v0
from aiokafka.protocol.types import Int16, Int32, String

from services.common import bootstrap as bootstrap_module
from services.common import kafka as kafka_module
from services.common.bootstrap import Infra
from services.common.kafka import RenewingProducer, start_within
from services.common.settings import KafkaSettings

NODE_ID = 0
#: What the fake broker speaks: (api key, min version, max version).
VERSIONS = ((ApiVersionRequest.API_KEY, 0, 0), (MetadataRequest.API_KEY, 0, 0), (InitProducerIdRequest.API_KEY, 0, 0))


class _RestartingBroker:
    """A one-node "cluster" on 127.0.0.1: still starting up for its first connection, up for the rest.

    Answers ApiVersions, Metadata and InitProducerId, all at version 0 (the only versions it
    advertises: ``VERSIONS``). ``requests`` lists what each connection (numbered from 1) asked for.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[int, str]] = []
        self.producer_ids = 0
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, starting = self.connections, self.connections == 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    size = Int32.decode(BytesIO(await reader.readexactly(4)))
                    frame = BytesIO(await reader.readexactly(size))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the client hung up
                # Request header v1 (none of these versions is "flexible"): key, version, correlation id, client id.
                api_key, api_version, correlation_id = Int16.decode(frame), Int16.decode(frame), Int32.decode(frame)
                String("utf-8").decode(frame)
                self.requests.append((number, API_KEYS.get(api_key, str(api_key))))
                response = self._answer(api_key, api_version, starting)
                if response is None:
                    return  # not something this broker speaks: drop the connection
                payload = ResponseHeader_v0(correlation_id).encode() + response.encode()
                writer.write(Int32.encode(len(payload)) + payload)
                await writer.drain()
                if starting and api_key == MetadataRequest.API_KEY:
                    return  # the broker restarts again: this connection drops
        finally:
            self._writers.discard(writer)
            writer.close()

    def _answer(self, api_key: int, api_version: int, starting: bool) -> Struct | None:
        if api_version != 0:
            return None
        if api_key == ApiVersionRequest.API_KEY:
            return ApiVersionResponse_v0(0, list(VERSIONS))
        if api_key == MetadataRequest.API_KEY:
            brokers = [] if starting else [(NODE_ID, "127.0.0.1", self.port)]
            return MetadataResponse_v0(brokers, [])  # no topics, and no brokers while starting up
        if api_key == InitProducerIdRequest.API_KEY and not starting:
            self.producer_ids += 1
            return InitProducerIdResponse_v0(0, 0, 1000 + self.producer_ids, 0)
        return None


def _on_connection(broker: _RestartingBroker, number: int) -> list[str]:
    return [name for connection, name in broker.requests if connection == number]


async def test_a_raw_idempotent_producer_never_starts_once_its_bootstrap_connection_drops(caplog):
    async with _RestartingBroker() as broker:
        producer = AIOKafkaProducer(bootstrap_servers=broker.address, enable_idempotence=True)
        try:
            with caplog.at_level(logging.WARNING, logger="aiokafka"), pytest.raises(TimeoutError):
                await asyncio.wait_for(producer.start(), 3)
        finally:
            await asyncio.wait_for(producer.stop(), 5)

    assert _on_connection(broker, 1) == ["ApiVersions", "Metadata"], "bootstrapped against the starting broker"
    assert broker.connections == 1, "it never went back to the bootstrap server, though that was up again"
    asked_none = [r.getMessage() for r in caplog.records
                  if "InitProducerIdRequest" in r.getMessage() and "to None" in r.getMessage()]
    assert asked_none and "NodeNotReadyError" in asked_none[0], "the #551 loop: a producer id from node None"


async def test_start_within_gives_up_the_hung_start_as_a_connection_error():
    async with _RestartingBroker() as broker:
        producer = AIOKafkaProducer(bootstrap_servers=broker.address, enable_idempotence=True)
        try:
            with pytest.raises(KafkaConnectionError, match="the producer did not start within 2s"):
                await start_within(producer.start(), "the producer", timeout_s=2)
        finally:
            await asyncio.wait_for(producer.stop(), 5)  # the given-up producer closes cleanly, at once
        assert broker.connections == 1


async def test_the_infra_replaces_the_hung_producer_with_one_that_starts(monkeypatch):
    monkeypatch.setattr(kafka_module, "START_TIMEOUT_S", 1.0)
    made: list[AIOKafkaProducer] = []
    make_producer = bootstrap_module.make_producer

    def recording(settings: KafkaSettings) -> AIOKafkaProducer:
        made.append(make_producer(settings))
        return made[-1]

    monkeypatch.setattr(bootstrap_module, "make_producer", recording)

    async with _RestartingBroker() as broker, AsyncExitStack() as stack:
        infra = Infra(connections=SimpleNamespace(kafka=KafkaSettings(bootstrap=broker.address)),
                      budget_settings=None, environ={}, topics=None, groups=None, keys=None, _stack=stack)
        producer = await asyncio.wait_for(infra.producer(), 10)

        assert isinstance(producer, RenewingProducer) and len(made) == 2, "one hung producer, then a new one"
        assert producer._producer is made[1] and not made[1]._closed
        assert made[0]._closed, "the hung producer is stopped before the next is made"
        assert _on_connection(broker, 1) == ["ApiVersions", "Metadata"]
        assert broker.producer_ids == 1, "the new producer bootstrapped again and got its producer id"
        assert "the producer" in infra.readiness.report()["kafka"], "not ready while it retried, saying why"
        await stack.aclose()
        assert made[1]._closed, "the started producer closes with the stack"
