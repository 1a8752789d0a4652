"""The Python client's two paths, HTTP (SSE) and Kafka, against the running pipeline."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from services.client import ForgelineClient, ForgelineError, KafkaGenerationClient
from services.common.contracts import ImageSpec
from services.providers.procedural import render_icon

pytestmark = pytest.mark.e2e


async def test_http_and_kafka_clients_get_their_images(running_pipeline):
    async with running_pipeline() as p:
        async with ForgelineClient(p.ingest_url) as client:
            over_http = await client.generate("holy golden shield", width=128, height=128, seed=5, timeout_s=60)
            with pytest.raises(ForgelineError) as refused:
                await client.submit("", width=100)
        async with KafkaGenerationClient(p.connections.kafka, p.connections.topics, tenant="kafka-client") as kafka:
            over_kafka = await kafka.generate(ImageSpec(prompt="shadow staff", width=64, height=64, seed=3),
                                              timeout_s=60, metadata={"item": "staff-3"})
        async with httpx.AsyncClient(timeout=30) as browser:
            http_bytes = (await browser.get(over_http.url)).content

    assert over_http.status == "completed" and not over_http.cached
    assert http_bytes == render_icon(ImageSpec(prompt="holy golden shield", width=128, height=128, seed=5))
    assert refused.value.status_code == 422
    assert over_kafka.metadata == {"item": "staff-3"}
    assert over_kafka.sha256 == hashlib.sha256(
        render_icon(ImageSpec(prompt="shadow staff", width=64, height=64, seed=3))).hexdigest()
