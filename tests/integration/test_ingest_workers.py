"""``FORGELINE_INGEST_WORKERS=2``: two whole ingest processes on one port, started and stopped as one."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from services.common.settings import Connections
from services.devstack.process import free_ports

pytestmark = pytest.mark.integration


def _listeners(port: int) -> int:
    """Sockets listening on ``port`` (``/proc/net/tcp``: local address ``…:PORT``, state 0A)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            count += fields[1].endswith(f":{port:04X}") and fields[3] == "0A"
    return count


def _env(connections: Connections, port: int) -> dict[str, str]:
    s3 = connections.s3
    return os.environ | {
        "FORGELINE_KAFKA_BOOTSTRAP": connections.kafka.bootstrap,
        "FORGELINE_TOPICS_PREFIX": connections.topics.prefix,
        "FORGELINE_REDIS_URL": connections.redis.url.get_secret_value(),
        "FORGELINE_REDIS_KEY_PREFIX": connections.redis.key_prefix,
        "FORGELINE_S3_ENDPOINT_URL": str(s3.endpoint_url), "FORGELINE_S3_BUCKET": s3.bucket,
        "FORGELINE_S3_ACCESS_KEY_ID": s3.access_key_id.get_secret_value(),
        "FORGELINE_S3_SECRET_ACCESS_KEY": s3.secret_access_key.get_secret_value(),
        "FORGELINE_INGEST_PORT": str(port), "FORGELINE_INGEST_WORKERS": "2", "FORGELINE_INGEST_LOG_LEVEL": "WARNING",
    }


async def test_two_workers_share_the_port_serve_jobs_and_stop_together(connections: Connections, topics) -> None:
    (port,) = free_ports(1)
    first = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", "run", "ingest",
                                                 env=_env(connections, port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(600):  # both processes connect to Kafka and Redis before they are ready
                if _listeners(port) == 2:
                    with_ready = [await http.get("/readyz") for _ in range(8)]
                    if all(r.status_code == 200 for r in with_ready):
                        break
                await asyncio.sleep(0.2)
            assert _listeners(port) == 2, "the second worker never listened on the shared port"

            accepted = [await http.post("/v1/generations", json={"prompt": f"twin worker sword {i}"})
                        for i in range(8)]
            assert [r.status_code for r in accepted] == [202] * 8
            assert len({r.json()["job_id"] for r in accepted}) == 8
            statuses = [(await http.get(r.json()["status_url"])).json()["status"] for r in accepted]
            assert set(statuses) == {"queued"}  # each worker finds the jobs the other took (Redis)
    finally:
        first.send_signal(signal.SIGTERM)  # what Kubernetes sends: the first worker stops its sibling
        returncode = await asyncio.wait_for(first.wait(), 60)
    assert returncode == 0
    assert _listeners(port) == 0
