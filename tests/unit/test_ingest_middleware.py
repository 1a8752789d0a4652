"""The body limit and the access log, on a tiny app (no Kafka, no Redis)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from services.ingest.middleware import BodyLimit, RequestLog

LIMIT = 1000


class Echo(BaseModel):
    text: str


def tiny_app() -> FastAPI:
    app = FastAPI()

    @app.post("/json")
    async def json_body(body: Echo) -> dict[str, int]:
        return {"length": len(body.text)}

    @app.post("/raw")
    async def raw_body(request: Request) -> dict[str, int]:
        return {"length": len(await request.body())}

    app.add_middleware(BodyLimit, limit=lambda _path: LIMIT)
    app.add_middleware(RequestLog)
    return app


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=tiny_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def chunked(total: int, size: int = 300) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


async def test_bodies_up_to_the_limit_pass(http: httpx.AsyncClient):
    assert (await http.post("/raw", content=b"x" * LIMIT)).json() == {"length": LIMIT}
    assert (await http.post("/raw", content=chunked(LIMIT))).json() == {"length": LIMIT}


@pytest.mark.parametrize("path", ["/raw", "/json"])
async def test_a_declared_length_over_the_limit_is_413_before_reading(http: httpx.AsyncClient, path: str):
    response = await http.post(path, content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert f"limit of {LIMIT} bytes" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/raw", "/json"])
async def test_a_chunked_body_over_the_limit_is_413_while_reading(http: httpx.AsyncClient, path: str):
    response = await http.post(path, content=chunked(5 * LIMIT), headers={"content-type": "application/json"})

    assert response.status_code == 413
    assert f"limit of {LIMIT} bytes" in response.json()["detail"]


async def test_each_request_is_logged_once_without_query_or_body(http: httpx.AsyncClient, caplog):
    caplog.set_level(logging.INFO, logger="forgeline.ingest.access")

    response = await http.post("/json?api_key=secret-in-query", json={"text": "secret-in-body"},
                               headers={"X-Request-ID": "req-123", "Authorization": "Bearer secret-in-header"})

    assert response.headers["x-request-id"] == "req-123"
    [record] = [r for r in caplog.records if r.name == "forgeline.ingest.access"]
    line = record.getMessage()
    assert line.startswith("POST /json 200 ") and "request_id=req-123" in line
    assert "secret" not in line


async def test_an_unusable_request_id_is_replaced(http: httpx.AsyncClient):
    response = await http.post("/raw", content=b"", headers={"X-Request-ID": "bad id\twith spaces"})

    assert response.headers["x-request-id"] != "bad id\twith spaces"
    assert len(response.headers["x-request-id"]) == 32
