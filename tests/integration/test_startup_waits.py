"""Start-up before the broker is there: every client waits for it, ingest answers 503 meanwhile,
and a stop signal still ends a service that is waiting."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import httpx
import pytest

from services.common.bootstrap import bootstrap
from services.common.health import Readiness
from services.common.kafka import send_event
from services.common.settings import Connections
from services.common.worker import _serve_until_stopped
from services.devstack.process import free_ports
from services.ingest.app import serve
from services.ingest.settings import IngestSettings
from tests.integration.ingest_support import consume
from tests.integration.test_consumer_loop import _request

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def _proxy(port: int, target_host: str, target_port: int):
    """A TCP forwarder on ``port`` to the real broker: the broker "comes up" when this starts."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(forward, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


def _through(connections: Connections, port: int) -> Connections:
    kafka = connections.kafka.model_copy(update={"bootstrap": f"127.0.0.1:{port}", "request_timeout_ms": 2000})
    return dataclasses.replace(connections, kafka=kafka)


async def test_a_producer_started_before_the_broker_waits_for_it(connections: Connections, topics):
    [port] = free_ports(1)
    host, broker_port = connections.kafka.bootstrap.split(",")[0].rsplit(":", 1)
    readiness = Readiness()
    async with bootstrap(_through(connections, port), readiness=readiness) as infra:
        starting = asyncio.create_task(infra.producer())
        await asyncio.sleep(3)  # "Unable to bootstrap" a few times over
        assert not starting.done()
        assert readiness.report()["kafka"].startswith("the producer")
        async with _proxy(port, host, int(broker_port)):
            producer = await asyncio.wait_for(starting, 30)
            event = _request("sent once the broker came up")
            await send_event(producer, infra.topics.name("generation.requested"), event)
    [record] = await consume(connections, infra.topics.name("generation.requested"), 1)
    assert record.key == event.job_id.encode()


async def test_ingest_listens_at_once_and_answers_503_until_kafka_is_there(connections: Connections, topics):
    [kafka_port, api_port] = free_ports(2)
    host, broker_port = connections.kafka.bootstrap.split(",")[0].rsplit(":", 1)
    stop = asyncio.Event()
    settings = IngestSettings(host="127.0.0.1", port=api_port)
    async with bootstrap(_through(connections, kafka_port)) as infra:
        serving = asyncio.create_task(serve(settings, infra, stop))
        base = f"http://127.0.0.1:{api_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            for _ in range(100):
                with contextlib.suppress(httpx.TransportError):
                    health = await http.get("/healthz")
                    break
                await asyncio.sleep(0.1)
            ready = await http.get("/readyz")
            submit = await http.post("/v1/generations", json={"prompt": "too early"})
            async with _proxy(kafka_port, host, int(broker_port)):
                for _ in range(150):
                    if (await http.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.2)
                later = await http.post("/v1/generations", json={"prompt": "on time"})
                stop.set()
                await asyncio.wait_for(serving, 30)

    assert health.status_code == 200
    assert ready.status_code == 503 and ready.json()["checks"] == {"startup": "connecting to Kafka"}
    assert submit.status_code == 503 and submit.headers["Retry-After"] == "5"
    assert later.status_code == 202, later.text


async def test_a_stop_signal_ends_a_service_still_waiting_for_its_dependencies():
    never = asyncio.Event()
    stop = asyncio.Event()

    async def waiting_forever() -> None:
        await never.wait()  # as a service in until_ready() while the broker is away

    running = asyncio.create_task(_serve_until_stopped(waiting_forever(), stop, grace_s=0.5))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(running, 5)
