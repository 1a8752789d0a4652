"""Hostile input that schemathesis does not generate, against the real ingest on Kafka, Redis and S3.

NaN and Infinity, lone surrogates, megabyte fields, oversized images in each encoding, Redis's
stream-id limits, bodies that are not UTF-8 or nest too deeply, false Content-Length and chunked
bodies on a real socket. Every answer is a 4xx that names the field, small, and never the input.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from services.common import fetch
from services.common.settings import Connections
from services.devstack.process import free_ports
from services.ingest import webhook_checks
from services.ingest.settings import IngestSettings
from services.ingest.validation import EXCERPT_CHARS
from tests.integration.ingest_support import Api, api, requested_count, served

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
SMALL_BODY = 2_000  # bytes: every refusal fits in this, whatever was sent
PNG_1X1 = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


def data_url(size: int) -> str:
    """A data: URL of ``size`` bytes that start like a PNG: only its size matters to the checks."""
    return "data:image/png;base64," + base64.b64encode(PNG_1X1 + b"\0" * (size - len(PNG_1X1))).decode()


def refused(response: httpx.Response, status: int) -> dict | list:
    """The refusal's detail, after checking its status and that it is small."""
    assert response.status_code == status, response.text[:500]
    assert len(response.content) < SMALL_BODY, f"{len(response.content)} bytes: {response.text[:200]}"
    return response.json()["detail"]


def problem_at(response: httpx.Response, *loc: str | int) -> dict:
    detail = refused(response, 422)
    matching = [problem for problem in detail if tuple(problem["loc"]) == loc]
    assert matching, f"nothing at {loc}: {detail}"
    return matching[0]


async def post_raw(client: Api, path: str, raw: bytes) -> httpx.Response:
    return await client.http.post(path, content=raw, headers=JSON)


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_422_naming_the_field(client: Api, token: str):
    deadline = await post_raw(client, "/v1/generations", f'{{"prompt": "axe", "deadline_s": {token}}}'.encode())
    width = await post_raw(client, "/v1/generations", f'{{"prompt": "axe", "width": {token}}}'.encode())
    prompt = await post_raw(client, "/v1/generations", f'{{"prompt": {token}}}'.encode())
    wait = await client.http.post(f"/v1/comparisons?wait={token}", json={
        "target_image": data_url(100), "generated_image": data_url(100), "original_prompt": "axe"})

    assert problem_at(deadline, "body", "deadline_s")["type"] == "finite_number"
    assert problem_at(width, "body", "width")["input"] == token
    assert problem_at(prompt, "body", "prompt")["type"] == "string_type"
    assert problem_at(wait, "query", "wait")["type"] in {"finite_number", "greater_than_equal", "less_than_equal"}
    assert await requested_count(client.deps) == 0


async def test_numbers_are_strict_a_string_or_a_boolean_is_not_a_number(client: Api):
    text = await client.http.post("/v1/generations", json={"prompt": "axe", "width": "512"})
    flag = await client.http.post("/v1/generations", json={"prompt": "axe", "seed": True})
    deadline = await client.http.post("/v1/generations", json={"prompt": "axe", "deadline_s": "30"})
    fraction = await client.http.post("/v1/generations", json={"prompt": "axe", "width": 512.5})
    integral = await client.http.post("/v1/generations", json={"prompt": "axe", "width": 512.0})  # JSON Schema's integer

    assert problem_at(text, "body", "width") == {"type": "number_type", "loc": ["body", "width"],
                                                 "msg": "Input should be a JSON number, not a string",
                                                 "ctx": {"kind": "a string"}, "input": "512"}
    assert problem_at(flag, "body", "seed")["input"] == "true"
    assert problem_at(deadline, "body", "deadline_s")["type"] == "number_type"
    assert problem_at(fraction, "body", "width")["type"] == "int_from_float"
    assert integral.status_code == 202, integral.text


# ----------------------------------------------------------------------------- text


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "style"])
async def test_a_lone_surrogate_is_422_naming_the_field(client: Api, field: str):
    body = {"prompt": "sword"} | {field: "sword \ud800 x"}
    response = await post_raw(client, "/v1/generations", json.dumps(body).encode())  # ASCII JSON: "\ud800"

    problem = problem_at(response, "body", field)
    assert problem["type"] == "string_unicode"
    assert problem["input"] == "sword \\ud800 x"  # escaped, so the answer encodes


async def test_a_lone_surrogate_in_a_metadata_key_or_comparison_prompt_is_422(client: Api):
    key = await post_raw(client, "/v1/generations", b'{"prompt": "axe", "metadata": {"item\\udfff": "1"}}')
    comparison = await post_raw(client, "/v1/comparisons", json.dumps({
        "target_image": data_url(100), "generated_image": data_url(100), "original_prompt": "axe \ud83d"}).encode())

    [problem] = refused(key, 422)
    assert (problem["type"], problem["loc"][:2], problem["loc"][-1]) == ("string_unicode", ["body", "metadata"], "[key]")
    assert problem_at(comparison, "body", "original_prompt")["type"] == "string_unicode"
    assert await requested_count(client.deps) == 0


async def test_a_megabyte_prompt_is_422_with_a_short_excerpt(client: Api):
    response = await client.http.post("/v1/generations", json={"prompt": "x" * 1_000_000})

    problem = problem_at(response, "body", "prompt")
    assert problem["type"] == "string_too_long"
    assert problem["ctx"] == {"max_length": "2000"}
    assert problem["input"] == "x" * EXCERPT_CHARS + "…"


async def test_a_megabyte_unknown_field_or_metadata_key_is_named_not_echoed(client: Api):
    extra = await client.http.post("/v1/generations", json={"prompt": "axe", "y" * 100_000: "z" * 1_000_000})
    key = await client.http.post("/v1/generations", json={"prompt": "axe", "metadata": {"k" * 1_000_000: "v"}})

    [problem] = refused(extra, 422)
    assert problem["type"] == "extra_forbidden"
    assert problem["loc"] == ["body", "y" * 64 + "…"]
    assert all(len(str(part)) <= 65 for problem in refused(key, 422) for part in problem["loc"])


async def test_a_body_that_is_not_utf8_is_400(client: Api):
    latin1 = await post_raw(client, "/v1/generations", '{"prompt": "épée"}'.encode("latin-1"))
    utf16 = await post_raw(client, "/v1/generations", '{"prompt": "axe"}'.encode("utf-16"))
    surrogate = await post_raw(client, "/v1/comparisons", b'{"original_prompt": "\xed\xa0\x80"}')  # CESU, not UTF-8

    assert "not UTF-8 (invalid byte at position 12)" in refused(latin1, 400)
    assert "not UTF-8" in refused(utf16, 400)
    assert "not UTF-8" in refused(surrogate, 400)


async def test_deep_nesting_is_400_and_moderate_nesting_is_named(client: Api):
    deep = await post_raw(client, "/v1/generations", b'{"prompt": "axe", "metadata": ' + b"[" * 100_000
                          + b"]" * 100_000 + b"}")
    moderate = await post_raw(client, "/v1/generations", b'{"prompt": "axe", "metadata": {"a": ' + b"[" * 500
                              + b"]" * 500 + b"}}")

    assert "nests too deeply" in refused(deep, 400)
    assert problem_at(moderate, "body", "metadata", "a")["type"] == "string_type"


# ----------------------------------------------------------------------------- images


async def test_an_11_mb_data_url_is_413_with_a_small_body_on_both_endpoints(client: Api):
    eleven = data_url(11 * 1024 * 1024)
    comparison = await client.http.post("/v1/comparisons", json={
        "target_image": eleven, "generated_image": data_url(100), "original_prompt": "axe"})
    generation = await client.http.post("/v1/generations", json={"prompt": "axe", "reference_image": eleven})

    assert "target_image" in refused(comparison, 413)
    assert "larger than the limit" in refused(generation, 413)  # the whole body is over 14 MiB


async def test_an_image_over_its_field_limit_is_413_whatever_the_encoding(client: Api):
    just_over = "data:image/png;base64," + "A" * 14_000_000  # under the body limit, over the field's
    percent = "data:image/png," + "%00" * 4_700_000  # not base64: the length still counts
    decoded_over = data_url(10 * 1024 * 1024 + 1)  # 13.98 M characters: over 10 MB once decoded

    for field in ("target_image", "generated_image"):
        for image in (just_over, percent, decoded_over):
            body = {"target_image": data_url(100), "generated_image": data_url(100), "original_prompt": "axe"}
            response = await client.http.post("/v1/comparisons", json=body | {field: image})
            assert field in refused(response, 413)
    reference = await client.http.post("/v1/generations", json={"prompt": "axe", "reference_image": just_over})
    assert "reference_image" in refused(reference, 413)
    assert await requested_count(client.deps) == 0


# ----------------------------------------------------------------------------- headers


async def test_a_last_event_id_redis_would_refuse_is_422_before_any_stream(client: Api):
    job = (await client.http.post("/v1/generations", json={"prompt": "axe"})).json()["job_id"]
    await client.deps.jobs.update(job, "completed", tenant="public")
    events = f"/v1/generations/{job}/events"

    for too_big in ("18446744073709551616", "1-18446744073709551616", "99999999999999999999", "01"):
        response = await client.http.get(events, headers={"Last-Event-ID": too_big})
        assert problem_at(response, "header", "Last-Event-ID")["type"] == "string_pattern_mismatch"
    largest = await client.http.get(events, headers={"Last-Event-ID": "18446744073709551615-18446744073709551615"})
    assert largest.status_code == 200  # a stream Redis reads after the end: the job ended, so it ends at once
    assert largest.headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize("key", ["", "k" * 256, "two words", "clé"])
async def test_an_idempotency_key_outside_its_schema_is_422(client: Api, key: str):
    response = await client.http.post("/v1/generations", json={"prompt": "axe"},
                                      headers={"Idempotency-Key": key.encode()})
    assert problem_at(response, "header", "Idempotency-Key")["type"] in {"string_too_short", "string_too_long",
                                                                        "string_pattern_mismatch"}
    assert await requested_count(client.deps) == 0


# ----------------------------------------------------------------------------- the documented examples


async def _public_dns(host: str, port: int) -> list[str]:
    """What the internet's DNS would answer for the documentation's example.com hosts (no DNS here)."""
    assert host.endswith("example.com"), host
    return ["93.184.215.14"]


async def test_every_example_in_the_openapi_document_is_accepted(client: Api, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(webhook_checks, "checked_url", functools.partial(fetch.checked_url, resolve=_public_dns))
    document = (await client.http.get("/openapi.json")).json()
    posted = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            if not body:
                continue
            schema = body["schema"]
            ref = schema.get("$ref") or next(s["$ref"] for s in schema["anyOf"] if "$ref" in s)  # optional bodies
            name = ref.rsplit("/", 1)[-1]
            for example in document["components"]["schemas"][name]["examples"]:
                url = path
                if "{job_id}" in path:  # a job of its own for each example (a cancel ends it)
                    job = await client.http.post("/v1/generations", json={"prompt": f"for {path} {posted}"})
                    url = path.replace("{job_id}", job.json()["job_id"])
                response = await client.http.request(method, url, json=example)
                assert response.status_code in (200, 201, 202), f"{method} {path} {example}: {response.text[:300]}"
                posted += 1
    assert posted >= 3


# ----------------------------------------------------------------------------- a real socket


@pytest.fixture
async def socket_api(connections: Connections, topics) -> AsyncIterator[tuple[str, int]]:
    [port] = free_ports(1)
    async with served(connections, IngestSettings(port=port, max_body_bytes=4096)):
        yield "127.0.0.1", port


async def exchange(address: tuple[str, int], request: bytes, *, close_write: bool = False) -> bytes:
    """Send raw bytes, read until the server closes or 10 s pass."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(request)
        await writer.drain()
        if close_write:
            writer.write_eof()
        try:
            return await asyncio.wait_for(reader.read(65536), 10)
        except TimeoutError:
            return b""
    finally:
        writer.close()


def post_head(length: int | None, *, chunked: bool = False) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
    return (f"POST /v1/generations HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{framing}\r\n"
            "Connection: close\r\n\r\n").encode()


async def test_false_content_lengths_never_reach_a_500(socket_api: tuple[str, int]):
    body = b'{"prompt": "axe"}'
    short = await exchange(socket_api, post_head(5) + body)  # says 5, sends 17: the rest is no request
    long = await exchange(socket_api, post_head(len(body) + 100) + body, close_write=True)  # says more, then stops
    over = await exchange(socket_api, post_head(10_000) + body)  # says over the limit: 413 before reading

    assert short.startswith(b"HTTP/1.1 422"), short[:200]
    assert b"json_invalid" in short
    assert not long.startswith(b"HTTP/1.1 5"), long[:200]
    assert over.startswith(b"HTTP/1.1 413"), over[:200]
    async with httpx.AsyncClient() as http:  # and the server still serves
        assert (await http.get(f"http://{socket_api[0]}:{socket_api[1]}/healthz")).status_code == 200


async def test_chunked_bodies_are_read_and_limited(socket_api: tuple[str, int]):
    body = b'{"prompt": "axe"}'
    ok = await exchange(socket_api, post_head(None, chunked=True) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    big = b'{"prompt": "axe", "negative_prompt": "' + b"x" * 5000 + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (big[:3000], big[3000:]))
    over = await exchange(socket_api, post_head(None, chunked=True) + chunks + b"0\r\n\r\n")
    bad_chunk = await exchange(socket_api, post_head(None, chunked=True) + b"zz\r\n" + body + b"\r\n0\r\n\r\n")

    assert ok.startswith(b"HTTP/1.1 202"), ok[:200]
    assert over.startswith(b"HTTP/1.1 413"), over[:200]
    assert bad_chunk.startswith(b"HTTP/1.1 400") or bad_chunk == b"", bad_chunk[:200]


async def test_auth_on_refuses_before_reading_fields(connections: Connections, topics):
    settings = IngestSettings(api_keys={"studio-a": "sk-hostile-a-0001", "studio-b": "sk-hostile-b-0002"})
    async with api(connections, settings) as client:
        anonymous = await post_raw(client, "/v1/generations", b'{"prompt": "axe", "deadline_s": NaN}')
        keyed = await client.http.post("/v1/generations", content=b'{"prompt": "axe", "deadline_s": NaN}',
                                       headers=JSON | {"Authorization": "Bearer sk-hostile-b-0002"})

    assert anonymous.status_code in (401, 422) and len(anonymous.content) < SMALL_BODY
    assert problem_at(keyed, "body", "deadline_s")["type"] == "finite_number"
