"""Image inputs of the comparer: data URL validation and SSRF-protected fetching."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from PIL import Image, ImageFile

from services.common.errors import Retryable
from services.common.fetch import SafeFetcher
from services.common.images import (
    MAX_IMAGE_BYTES,
    MAX_PIXELS,
    ImageInputError,
    ValidImage,
    decode_data_url,
    validate_image_bytes,
)
from services.fakeproviders.server import serve_fake

SECRET_QUERY = "?X-Amz-Signature=secretvalue"


def image_bytes(fmt: str, size: tuple[int, int] = (48, 32), **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buffer, fmt, **save)
    return buffer.getvalue()


def noise_png(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width``×``height`` RGB with an almost empty pixel stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + png_chunk(b"IEND", b""))


def data_url(content_type: str, data: bytes) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def refused(excinfo: pytest.ExceptionInfo[ImageInputError], code: str, status: int = 422) -> ImageInputError:
    error = excinfo.value
    assert (error.code, error.status) == (code, status), repr(error)
    assert str(error) == f"{error.field}: {error.reason}"
    return error


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel data is decoded."""
    def load(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# --- bytes and data URLs -----------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "content_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                                   ("WEBP", "image/webp")])
def test_valid_images_round_trip_through_data_urls(fmt: str, content_type: str) -> None:
    data = image_bytes(fmt)
    image = decode_data_url(data_url(content_type, data), field="target_image")
    assert (image.data, image.content_type, image.width, image.height) == (data, content_type, 48, 32)
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert decode_data_url(image.data_url(), field="target_image") == image
    assert image.data_url().startswith(f"data:{content_type};base64,")


def test_valid_image_repr_does_not_dump_bytes() -> None:
    image = validate_image_bytes(noise_png(), field="target_image")
    text = repr(image)
    assert text.startswith("ValidImage(image/png, 64x64, ")
    assert "\\x" not in text and len(text) < 120


def test_jpg_alias_is_accepted_as_jpeg() -> None:
    image = decode_data_url(data_url("image/jpg", image_bytes("JPEG")), field="target_image")
    assert image.content_type == "image/jpeg"


def test_gif_is_refused_by_its_bytes_even_when_declared_png() -> None:
    gif = image_bytes("GIF")
    with pytest.raises(ImageInputError) as excinfo:
        validate_image_bytes(gif, field="target_image")
    assert "is a GIF; only PNG, JPEG and WebP are accepted" in refused(excinfo, "unsupported_type").reason
    with pytest.raises(ImageInputError) as excinfo:
        decode_data_url(data_url("image/png", gif), field="target_image")
    assert "GIF" in refused(excinfo, "unsupported_type").reason


def test_declared_gif_type_is_refused() -> None:
    with pytest.raises(ImageInputError) as excinfo:
        decode_data_url(data_url("image/gif", image_bytes("PNG")), field="reference")
    error = refused(excinfo, "unsupported_type")
    assert error.field == "reference" and "image/gif" in error.reason


def test_declared_type_that_disagrees_with_the_bytes_is_refused_naming_both() -> None:
    with pytest.raises(ImageInputError) as excinfo:
        decode_data_url(data_url("image/png", image_bytes("JPEG")), field="target_image")
    assert refused(excinfo, "unsupported_type").reason == "declares image/png but the bytes are image/jpeg"


@pytest.mark.parametrize("url", ["data:image/png;base64,@@not*base64@@", "data:image/png;base64,iVBORw0KGgo=x",
                                 "data:image/png;base64,iVBORw0K\nGgo=", "data:image/png,rawbytes"])
def test_bad_base64_is_refused(url: str) -> None:
    with pytest.raises(ImageInputError) as excinfo:
        decode_data_url(url, field="target_image")
    error = refused(excinfo, "not_base64")
    assert "rawbytes" not in str(error) and "not" not in error.field


def test_a_non_data_url_is_a_bad_url() -> None:
    with pytest.raises(ImageInputError) as excinfo:
        decode_data_url("https://example.com/x.png", field="target_image")
    refused(excinfo, "bad_url")


def test_more_than_10_mb_is_refused_with_413() -> None:
    too_big = b"\x89PNG\r\n\x1a\n" + b"\x00" * MAX_IMAGE_BYTES
    with pytest.raises(ImageInputError) as excinfo:
        validate_image_bytes(too_big, field="target_image")
    assert str(MAX_IMAGE_BYTES) in refused(excinfo, "too_large", 413).reason

    url = data_url("image/png", too_big)
    started = time.perf_counter()
    with pytest.raises(ImageInputError) as excinfo:
        decode_data_url(url, field="target_image")
    error = refused(excinfo, "too_large", 413)
    assert len(str(error)) < 200  # the payload is never echoed
    assert time.perf_counter() - started < 0.5  # refused from the encoded length, before decoding


def test_exactly_10_mb_passes_the_size_check() -> None:
    at_limit = b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_IMAGE_BYTES - 8)
    with pytest.raises(ImageInputError) as excinfo:
        decode_data_url(data_url("image/png", at_limit), field="target_image")
    refused(excinfo, "undecodable")  # got past the size cap, then failed as the garbage it is


def test_a_side_over_4096_is_too_many_pixels(no_decoding: None) -> None:
    with pytest.raises(ImageInputError) as excinfo:
        validate_image_bytes(image_bytes("PNG", (5000, 10)), field="target_image")
    assert "5000x10" in refused(excinfo, "too_many_pixels").reason


def test_large_declared_dimensions_are_refused_without_decoding(no_decoding: None) -> None:
    with pytest.raises(ImageInputError) as excinfo:
        validate_image_bytes(png_claiming(8000, 8000), field="target_image")
    refused(excinfo, "too_many_pixels")


def test_decompression_bomb_header_is_refused_without_allocating(no_decoding: None) -> None:
    bomb = png_claiming(30000, 30000)
    assert len(bomb) < 100
    started = time.perf_counter()
    with pytest.raises(ImageInputError) as excinfo:
        validate_image_bytes(bomb, field="target_image")
    assert "decompression bomb" in refused(excinfo, "decompression_bomb").reason
    assert time.perf_counter() - started < 0.5


def test_animation_with_too_many_pixels_over_all_frames_is_refused(no_decoding: None) -> None:
    frames = [Image.new("RGB", (2048, 2048), ((i * 97) % 256, (i * 31) % 256, (i * 57) % 256)) for i in range(5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], quality=10, method=0, duration=100)
    with Image.open(io.BytesIO(buffer.getvalue())) as check:
        assert check.n_frames * 2048 * 2048 > MAX_PIXELS
    with pytest.raises(ImageInputError) as excinfo:
        validate_image_bytes(buffer.getvalue(), field="target_image")
    assert "frames of 2048x2048" in refused(excinfo, "decompression_bomb").reason


def test_small_animation_is_accepted() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=100)
    image = validate_image_bytes(buffer.getvalue(), field="target_image")
    assert (image.content_type, image.width, image.height) == ("image/webp", 32, 32)


def test_stream_shorter_than_the_declared_size_is_undecodable() -> None:
    with pytest.raises(ImageInputError) as excinfo:
        validate_image_bytes(png_claiming(4000, 4000), field="target_image")
    refused(excinfo, "undecodable")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_undecodable(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (128, 128), os.urandom(128 * 128 * 3)).save(buffer, fmt)
    data = buffer.getvalue()
    with pytest.raises(ImageInputError) as excinfo:
        validate_image_bytes(data[: len(data) // 2], field="target_image")
    refused(excinfo, "undecodable")


def test_empty_and_html_bodies_are_unsupported() -> None:
    for data, words in ((b"", "is empty"), (b"<!DOCTYPE html><html></html>", "HTML")):
        with pytest.raises(ImageInputError) as excinfo:
            validate_image_bytes(data, field="target_image")
        assert words in refused(excinfo, "unsupported_type").reason


# --- SSRF: refused before any connection -------------------------------------------------------

class FakeResolver:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.table[host]


def unreachable() -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A client whose every request fails the test: refusals must happen before connecting."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise AssertionError(f"a request went out to {request.url}")

    return httpx.AsyncClient(transport=httpx.MockTransport(handler)), seen


RESOLVER_TABLE = {
    "localhost": ["127.0.0.1"],
    "internal.example": ["10.20.0.3"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": ["93.184.216.34", "10.0.0.1"],
    "mapped.example": ["::ffff:192.168.0.9"],
    "public.example": ["93.184.216.34"],
}


@pytest.mark.parametrize(("url", "words"), [
    ("https://127.0.0.1/x.png", "127.0.0.1 is a loopback address"),
    ("https://localhost/x.png", "localhost resolves to a loopback address"),
    ("https://10.0.0.5/x.png", "10.0.0.5 is a private address"),
    ("https://192.168.1.1/x.png", "192.168.1.1 is a private address"),
    ("https://172.16.0.1/x.png", "172.16.0.1 is a private address"),
    ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is the cloud metadata address"),
    ("https://metadata.example/latest/", "resolves to 169.254.169.254, the cloud metadata address"),
    ("https://[::1]/x.png", "::1 is a loopback address"),
    ("https://[::ffff:10.0.0.1]/x.png", "10.0.0.1 is a private address"),
    ("https://[::ffff:169.254.169.254]/x.png", "cloud metadata"),
    ("https://[fe80::1]/x.png", "link-local"),
    ("https://[fc00::5]/x.png", "private"),
    ("https://[2002:a00:1::1]/x.png", "10.0.0.1 is a private address"),  # 6to4 around 10.0.0.1
    ("https://0.0.0.0/x.png", "0.0.0.0 is the unspecified address"),
    ("https://224.0.0.1/x.png", "multicast"),
    ("https://100.64.0.1/x.png", "not a public address"),  # carrier-grade NAT
    ("https://2130706433/x.png", "127.0.0.1 is a loopback address"),
    ("https://0x7f.1/x.png", "127.0.0.1 is a loopback address"),
    ("https://017700000001/x.png", "127.0.0.1 is a loopback address"),
    ("https://10.1/x.png", "10.0.0.1 is a private address"),
    ("https://internal.example/x.png", "internal.example resolves to a private address"),
    ("https://mixed.example/x.png", "mixed.example resolves to a private address"),
    ("https://mapped.example/x.png", "resolves to a private address"),
    ("http://public.example/x.png", "plain http is not allowed; use https"),
    ("ftp://public.example/x.png", "scheme 'ftp' is not allowed"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("https://user:s3cr3t@public.example/x.png", "credentials"),
])
async def test_unsafe_urls_are_refused_before_connecting(url: str, words: str) -> None:
    http, seen = unreachable()
    resolver = FakeResolver(RESOLVER_TABLE)
    async with http, SafeFetcher(http, resolver=resolver) as fetcher:
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch(url, field="target_image")
    error = refused(excinfo, "url_refused")
    assert words in error.reason
    assert "s3cr3t" not in str(error) and "s3cr3t" not in repr(error) and not isinstance(error, Retryable)
    assert seen == []
    if httpx.URL(url).host not in RESOLVER_TABLE:
        assert resolver.lookups == []  # IP literals, numeric forms included, are never looked up


async def test_http_to_a_public_host_is_refused_even_in_loopback_test_mode() -> None:
    http, seen = unreachable()
    async with http, SafeFetcher(http, allow_loopback=True, resolver=FakeResolver(RESOLVER_TABLE)) as fetcher:
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch("http://public.example/x.png", field="target_image")
    assert "only allowed to loopback" in refused(excinfo, "url_refused").reason
    assert seen == []


@pytest.mark.parametrize("url", ["not a url", "/relative/x.png", "https://09.1/x.png", "https://bad_host!/x"])
async def test_malformed_urls_are_bad_urls(url: str) -> None:
    http, seen = unreachable()
    async with http, SafeFetcher(http, resolver=FakeResolver({})) as fetcher:
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch(url, field="target_image")
    refused(excinfo, "bad_url")
    assert seen == []


async def test_refusals_never_show_the_query_string() -> None:
    http, _ = unreachable()
    async with http, SafeFetcher(http, resolver=FakeResolver(RESOLVER_TABLE)) as fetcher:
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch(f"https://10.0.0.5/bucket/x.png{SECRET_QUERY}", field="target_image")
    error = refused(excinfo, "url_refused")
    assert "https://10.0.0.5/bucket/x.png" in str(error)
    for text in (str(error), repr(error)):
        assert "secretvalue" not in text and "X-Amz" not in text


# --- pinning, with a mock transport standing in for a public host ------------------------------

class PublicHost:
    """images.example.com at 93.184.216.34, answered by a MockTransport: no real network."""

    png = image_bytes("PNG", (20, 10))

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        routes = {
            "/x.png": httpx.Response(200, content=self.png, headers={"content-type": "text/plain"}),
            "/relative": httpx.Response(302, headers={"location": "/x.png"}),
            "/to-loopback": httpx.Response(302, headers={"location": "http://127.0.0.1:1/x"}),
            "/to-internal": httpx.Response(301, headers={"location": "https://internal.example/x.png"}),
            "/gzip": httpx.Response(200, content=zlib.compress(self.png), headers={"content-encoding": "deflate"}),
        }
        return routes.get(request.url.path, httpx.Response(404))


async def test_connection_is_pinned_to_the_checked_address_with_host_and_sni() -> None:
    host = PublicHost()
    resolver = FakeResolver({"images.example.com": ["93.184.216.34"]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(host)) as http:
        fetcher = SafeFetcher(http, resolver=resolver)
        image = await fetcher.fetch(f"https://images.example.com/relative{SECRET_QUERY}", field="target_image")
        await fetcher.aclose()
        assert not http.is_closed  # a client passed in belongs to the caller
    assert image.data == PublicHost.png and image.content_type == "image/png"
    assert [r.url.path for r in host.requests] == ["/relative", "/x.png"]
    for request in host.requests:
        assert request.url.scheme == "https" and request.url.host == "93.184.216.34"
        assert request.headers["host"] == "images.example.com"
        assert request.extensions["sni_hostname"] == "images.example.com"
    assert host.requests[0].url.query == SECRET_QUERY[1:].encode()  # the query still goes to the server
    assert resolver.lookups == ["images.example.com", "images.example.com"]  # once per hop


async def test_redirect_from_a_public_host_to_loopback_is_refused() -> None:
    host = PublicHost()
    resolver = FakeResolver({"images.example.com": ["93.184.216.34"]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(host)) as http:
        fetcher = SafeFetcher(http, resolver=resolver)
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch("https://images.example.com:8443/to-loopback", field="target_image")
    error = refused(excinfo, "url_refused")
    assert error.reason.startswith("redirect to http://127.0.0.1:1/x refused: plain http is not allowed")
    [request] = host.requests
    assert (request.url.host, request.url.port) == ("93.184.216.34", 8443)
    assert request.headers["host"] == "images.example.com:8443"
    assert request.extensions["sni_hostname"] == "images.example.com"


async def test_redirect_to_a_name_with_a_private_address_is_refused() -> None:
    host = PublicHost()
    resolver = FakeResolver({"images.example.com": ["93.184.216.34"], "internal.example": ["10.9.8.7"]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(host)) as http:
        with pytest.raises(ImageInputError) as excinfo:
            await SafeFetcher(http, resolver=resolver).fetch("https://images.example.com/to-internal",
                                                             field="target_image")
    error = refused(excinfo, "url_refused")
    assert "internal.example resolves to a private address" in error.reason
    assert "10.9.8.7" not in error.reason  # internal addresses are not disclosed
    assert len(host.requests) == 1


async def test_dns_rebinding_cannot_swap_the_address_after_the_check() -> None:
    answers = [["93.184.216.34"], ["127.0.0.1"]]

    async def rebinding(host: str, port: int) -> list[str]:
        return answers.pop(0)

    host = PublicHost()
    async with httpx.AsyncClient(transport=httpx.MockTransport(host)) as http:
        image = await SafeFetcher(http, resolver=rebinding).fetch("https://images.example.com/x.png",
                                                                  field="target_image")
    assert image.width == 20
    assert [r.url.host for r in host.requests] == ["93.184.216.34"]
    assert answers == [["127.0.0.1"]]  # the second answer was never asked for


async def test_compressed_bodies_are_refused() -> None:
    resolver = FakeResolver({"images.example.com": ["93.184.216.34"]})
    async with httpx.AsyncClient(transport=httpx.MockTransport(PublicHost())) as http:
        with pytest.raises(ImageInputError) as excinfo:
            await SafeFetcher(http, resolver=resolver).fetch("https://images.example.com/gzip", field="target_image")
    assert "Content-Encoding deflate" in refused(excinfo, "fetch_failed").reason


async def test_an_owned_client_is_closed_with_the_fetcher() -> None:
    async with SafeFetcher() as fetcher:
        http = fetcher._http
        assert not http.is_closed
    assert http.is_closed


# --- a real loopback server (allow_loopback, the test setting) ---------------------------------

PNG = noise_png((40, 30))


class Recording(httpx.AsyncBaseTransport):
    """The real transport, noting every request that goes out."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def loopback_app(release: asyncio.Event) -> FastAPI:
    app = FastAPI()

    @app.get("/image.png")
    async def image() -> Response:
        return Response(PNG, media_type="application/octet-stream")

    @app.get("/to-private")
    async def to_private() -> Response:
        return RedirectResponse("http://10.0.0.7/x.png", status_code=302)

    @app.get("/to-metadata")
    async def to_metadata() -> Response:
        return RedirectResponse("https://169.254.169.254/latest/meta-data/", status_code=302)

    @app.get("/to-local")
    async def to_local() -> Response:
        return RedirectResponse("/image.png", status_code=302)

    @app.get("/loop/{n}")
    async def loop(n: int) -> Response:
        return RedirectResponse(f"/loop/{n + 1}", status_code=302)

    @app.get("/big")
    async def big() -> Response:
        return Response(PNG[:8] + b"\x00" * 2000, media_type="image/png")

    @app.get("/big-stream")
    async def big_stream() -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"\x00" * 500
        return StreamingResponse(chunks(), media_type="image/png")

    @app.get("/stall")
    async def stall() -> Response:
        try:
            await asyncio.wait_for(release.wait(), 10)
        except TimeoutError:
            pass
        return Response(PNG, media_type="image/png")

    @app.get("/page.html")
    async def page() -> Response:
        return Response("<!DOCTYPE html><html><body>hi</body></html>", media_type="image/png")

    @app.get("/busy")
    async def busy() -> Response:
        return Response("try later", status_code=503)

    return app


@pytest.fixture(scope="module")
async def server() -> AsyncIterator[str]:
    release = asyncio.Event()
    async with serve_fake(loopback_app(release)) as base_url:
        yield base_url
        release.set()  # let a stalled handler finish so the server can stop


@pytest.fixture
async def recording() -> AsyncIterator[tuple[SafeFetcher, Recording]]:
    transport = Recording()
    async with httpx.AsyncClient(transport=transport) as http:
        yield SafeFetcher(http, allow_loopback=True, resolver=FakeResolver({})), transport


async def test_loopback_fetch_returns_the_served_image(recording: tuple[SafeFetcher, Recording],
                                                       server: str) -> None:
    fetcher, _ = recording
    image = await fetcher.fetch(f"{server}/image.png", field="target_image")
    assert image == ValidImage(data=PNG, content_type="image/png", width=40, height=30)


async def test_loopback_redirects_to_private_and_metadata_are_refused_without_connecting(
        recording: tuple[SafeFetcher, Recording], server: str) -> None:
    fetcher, transport = recording
    with pytest.raises(ImageInputError) as excinfo:
        await fetcher.fetch(f"{server}/to-private", field="target_image")
    error = refused(excinfo, "url_refused")
    assert error.reason == "redirect to http://10.0.0.7/x.png refused: 10.0.0.7 is a private address"

    with pytest.raises(ImageInputError) as excinfo:
        await fetcher.fetch(f"{server}/to-metadata", field="target_image")
    assert "169.254.169.254 is the cloud metadata address" in refused(excinfo, "url_refused").reason

    assert {r.url.host for r in transport.requests} == {"127.0.0.1"}
    assert [r.url.path for r in transport.requests] == ["/to-private", "/to-metadata"]


async def test_loopback_redirect_to_a_loopback_path_is_followed(recording: tuple[SafeFetcher, Recording],
                                                               server: str) -> None:
    fetcher, transport = recording
    image = await fetcher.fetch(f"{server}/to-local", field="target_image")
    assert image.data == PNG and image.sha256 == hashlib.sha256(PNG).hexdigest()
    assert [r.url.path for r in transport.requests] == ["/to-local", "/image.png"]


async def test_localhost_is_resolved_once_and_pinned(server: str) -> None:
    transport = Recording()
    port = httpx.URL(server).port
    async with httpx.AsyncClient(transport=transport) as http:
        image = await SafeFetcher(http, allow_loopback=True).fetch(f"http://localhost:{port}/image.png",
                                                                   field="target_image")
    assert image.data == PNG
    assert transport.requests[-1].url.host == "127.0.0.1"  # ::1 may be tried first; nothing listens there
    assert all(r.headers["host"] == f"localhost:{port}" for r in transport.requests)


async def test_redirect_loop_is_refused_after_max_redirects(recording: tuple[SafeFetcher, Recording],
                                                            server: str) -> None:
    fetcher, transport = recording
    with pytest.raises(ImageInputError) as excinfo:
        await fetcher.fetch(f"{server}/loop/0", field="target_image")
    assert refused(excinfo, "url_refused").reason == f"{server}/loop/0 redirected more than 3 times"
    assert len(transport.requests) == 4


@pytest.mark.parametrize("path", ["/big", "/big-stream"])
async def test_bodies_over_max_bytes_are_refused_with_413(server: str, path: str) -> None:
    async with SafeFetcher(allow_loopback=True, max_bytes=1000) as fetcher:
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch(f"{server}{path}", field="target_image")
    assert "larger than 1000 bytes" in refused(excinfo, "too_large", 413).reason


async def test_a_stalled_server_times_out_as_retryable(server: str) -> None:
    started = time.perf_counter()
    async with SafeFetcher(allow_loopback=True, timeout_s=0.5) as fetcher:
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch(f"{server}/stall{SECRET_QUERY}", field="target_image")
    error = refused(excinfo, "fetch_timeout")
    assert isinstance(error, Retryable) and time.perf_counter() - started < 3
    assert "secretvalue" not in str(error) and "secretvalue" not in repr(error)


async def test_404_is_permanent_and_hides_the_query(server: str) -> None:
    async with SafeFetcher(allow_loopback=True) as fetcher:
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch(f"{server}/missing.png{SECRET_QUERY}", field="target_image")
    error = refused(excinfo, "fetch_failed")
    assert not isinstance(error, Retryable)
    assert error.reason == f"{server}/missing.png answered HTTP 404"
    for text in (str(error), repr(error)):
        assert "secretvalue" not in text and "X-Amz" not in text


async def test_503_is_retryable(server: str) -> None:
    async with SafeFetcher(allow_loopback=True) as fetcher:
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch(f"{server}/busy", field="target_image")
    error = refused(excinfo, "fetch_failed")
    assert isinstance(error, Retryable) and "HTTP 503" in error.reason


async def test_connection_refused_is_retryable() -> None:
    async with SafeFetcher(allow_loopback=True) as fetcher:
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch("http://127.0.0.1:1/x.png", field="target_image")
    error = refused(excinfo, "fetch_failed")
    assert isinstance(error, Retryable) and "ConnectError" in error.reason


async def test_html_body_is_unsupported_whatever_its_content_type(server: str) -> None:
    async with SafeFetcher(allow_loopback=True) as fetcher:
        with pytest.raises(ImageInputError) as excinfo:
            await fetcher.fetch(f"{server}/page.html", field="target_image")
    assert "HTML" in refused(excinfo, "unsupported_type").reason
