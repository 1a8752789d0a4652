"""Image inputs of the comparer: data URLs and https URLs, turned into checked ``ValidImage``s.

Every input goes through :func:`validate_image_bytes`: at most ``MAX_IMAGE_BYTES``, PNG, JPEG or
WebP by its magic bytes (a declared type is never trusted), at most ``MAX_SIDE`` pixels a side and,
over all frames of an animation, at most ``MAX_SIDE``² pixels, and it must decode completely.
Dimensions are read from the header before any pixel is decoded, so a small file that declares a
huge canvas (a decompression bomb) is refused without allocating it.

URLs are fetched by :class:`SafeFetcher`, which refuses to be turned against our own network
(SSRF). For the first URL and for every redirect (followed by hand, at most ``max_redirects``):

- the scheme is https; plain http only with ``allow_loopback`` and a host that is loopback (tests);
- no user:password in the URL;
- the host is resolved once, and *every* address must be public: not private, loopback,
  link-local, multicast, reserved or unspecified, IPv4-mapped and 6to4 IPv6 judged by the IPv4
  inside, 169.254.169.254 named as cloud metadata. Numeric hosts that the C resolver would read
  as IPv4 (``2130706433``, ``0x7f.1``, ``017700000001``) are judged as the address they spell;
- the connection goes to the address that was checked, never to a second resolution, which
  defeats DNS rebinding. The request URL carries the IP; the ``Host`` header carries the original
  name and, for https, the ``sni_hostname`` request extension (httpcore passes it to TLS as
  ``server_hostname``) makes the handshake send and verify the certificate for the real name.

Bodies are streamed and refused past ``max_bytes``, compressed bodies are refused (a gzip or
brotli body could expand a thousandfold in one chunk before the cap sees it), and the whole fetch,
redirects included, runs under one ``timeout_s``. A client this class creates ignores proxy
environment variables: a proxy would resolve the name again. A client passed in must not use a
proxy for the same reason.

Errors are all :class:`ImageInputError`, with the request ``field``, an HTTP ``status`` (413 when
too large, 422 otherwise), a machine ``code`` and ``retryable`` for transient fetch failures.
Messages name at most ``scheme://host/path`` of a URL (query strings are often signed) and never
a data URL's payload.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cached_property
from types import TracebackType
from typing import Self

import httpx
from PIL import Image

from services.common.images import sniff_content_type

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_SIDE",
    "ImageInputError",
    "Resolver",
    "SafeFetcher",
    "ValidImage",
    "check_url",
    "decode_data_url",
    "validate_image_bytes",
]

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # over all frames: bounds the memory a full decode can take

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ImageInputError(ValueError):
    """An image input that cannot be used; ``str()`` is safe to show the caller."""

    def __init__(self, field: str, reason: str, *, code: str, status: int = 422, retryable: bool = False) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code
        self.status = status
        self.retryable = retryable

    def __repr__(self) -> str:
        return (f"ImageInputError(field={self.field!r}, code={self.code!r}, status={self.status}, "
                f"retryable={self.retryable}, reason={self.reason!r})")


@dataclass(frozen=True)
class ValidImage:
    """Image bytes that passed :func:`validate_image_bytes`; the type comes from the magic bytes."""

    data: bytes = dataclass_field(repr=False)
    content_type: str
    width: int
    height: int

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def data_url(self) -> str:
        return f"data:{self.content_type};base64,{base64.b64encode(self.data).decode('ascii')}"

    def __repr__(self) -> str:
        return (f"ValidImage({self.content_type}, {self.width}x{self.height}, {len(self.data)} bytes, "
                f"sha256={self.sha256[:12]}…)")


# --- bytes -------------------------------------------------------------------------------------

_PIL_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
_KNOWN_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"GIF8", "a GIF"), (b"BM", "a BMP"), (b"II*\x00", "a TIFF"), (b"MM\x00*", "a TIFF"),
    (b"%PDF", "a PDF"), (b"\x00\x00\x01\x00", "an ICO"),
)


def _describe(data: bytes) -> str:
    """What unsupported bytes look like, for the caller's benefit."""
    if not data:
        return "is empty"
    for signature, name in _KNOWN_OTHERS:
        if data.startswith(signature):
            return f"is {name}"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "is an HTML page"
    if head.startswith((b"<svg", b"<?xml")):
        return "is SVG/XML"
    if head[:12].find(b"ftyp") == 4:
        return "is an HEIF/AVIF or video file"
    return "is not a PNG, JPEG or WebP image"


def validate_image_bytes(data: bytes, *, field: str, max_bytes: int = MAX_IMAGE_BYTES) -> ValidImage:
    """``data`` as a ``ValidImage``, or the ``ImageInputError`` that says why it cannot be one."""
    if len(data) > max_bytes:
        raise ImageInputError(field, f"is {len(data)} bytes; at most {max_bytes} are accepted",
                              code="too_large", status=413)
    content_type = sniff_content_type(data)
    if content_type is None:
        raise ImageInputError(field, f"{_describe(data)}; only PNG, JPEG and WebP are accepted",
                              code="unsupported_type")
    try:
        # Image.open reads the header only; Pillow's own bomb check runs here on the declared size.
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[content_type]]) as image:
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
            if width > MAX_SIDE or height > MAX_SIDE:
                raise ImageInputError(field, f"is {width}x{height} pixels; at most {MAX_SIDE}x{MAX_SIDE} "
                                      "are accepted", code="too_many_pixels")
            if width < 1 or height < 1:
                raise ImageInputError(field, f"declares {width}x{height} pixels", code="undecodable")
            if frames * width * height > MAX_PIXELS:
                raise ImageInputError(field, f"has {frames} frames of {width}x{height} pixels; at most "
                                      f"{MAX_PIXELS} pixels in all are accepted", code="decompression_bomb")
            image.load()  # within MAX_PIXELS now: bounded memory; finds truncated and corrupt data
    except Image.DecompressionBombError:
        raise ImageInputError(field, "declares more pixels than can be decoded safely (decompression bomb)",
                              code="decompression_bomb") from None
    except ImageInputError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # Pillow reports truncated/corrupt data with all of these depending on the plugin.
        raise ImageInputError(field, f"is a {content_type} that cannot be decoded ({type(exc).__name__})",
                              code="undecodable") from None
    return ValidImage(data=data, content_type=content_type, width=width, height=height)


# --- data URLs ---------------------------------------------------------------------------------

_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),", re.IGNORECASE)
_DECLARED = {"image/png": "image/png", "image/jpeg": "image/jpeg", "image/jpg": "image/jpeg",
             "image/webp": "image/webp"}


def decode_data_url(url: str, *, field: str, max_bytes: int = MAX_IMAGE_BYTES) -> ValidImage:
    """A ``data:image/<png|jpeg|webp>;base64,...`` URL as a ``ValidImage``."""
    match = _DATA_URL.match(url)
    if match is None:
        raise ImageInputError(field, "is not a data URL (data:image/png;base64,...)", code="bad_url")
    declared_raw = match["type"].strip().lower()
    declared = _DECLARED.get(declared_raw)
    if declared is None:
        shown = declared_raw[:40] or "no type"
        raise ImageInputError(field, f"declares {shown}; only image/png, image/jpeg and image/webp are accepted",
                              code="unsupported_type")
    if "base64" not in [p.strip().lower() for p in match["params"].split(";")]:
        raise ImageInputError(field, "is not a base64 data URL (data:<type>;base64,...)", code="not_base64")
    payload = url[match.end():]
    # base64 is 4/3 of the bytes: refuse before decoding what would be too large anyway.
    if len(payload) * 3 // 4 > max_bytes + 2:
        raise ImageInputError(field, f"encodes about {len(payload) * 3 // 4} bytes; at most {max_bytes} are "
                              "accepted", code="too_large", status=413)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "payload is not valid base64", code="not_base64") from None
    actual = sniff_content_type(data)
    if actual is not None and actual != declared:
        raise ImageInputError(field, f"declares {declared} but the bytes are {actual}", code="unsupported_type")
    return validate_image_bytes(data, field=field, max_bytes=max_bytes)


# --- addresses ---------------------------------------------------------------------------------

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NUMERIC_PART = re.compile(r"0x[0-9a-f]*|[0-9]+")
_HOSTNAME = re.compile(r"[a-z0-9_.-]+")


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address ``inet_aton`` reads from ``2130706433``, ``127.1``, ``0x7f.0.0.1`` or ``0177.0.0.1``
    (None if ``host`` is not numeric). Resolvers accept these forms, so they are judged as addresses."""
    parts = host.lower().removesuffix(".").split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC_PART.fullmatch(p) for p in parts):
        return None
    values = []
    for part in parts:
        if part.startswith("0x"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            values.append(int(part, 8))  # ValueError for 08, 09: the caller refuses the URL
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        raise ValueError(f"{host} is out of range")
    number = last
    for index, value in enumerate(head):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return _numeric_ipv4(host)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip.ipv4_mapped or ip.sixtofour
    return None


def _refusal(ip: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why a connection to ``ip`` is refused (None: it may be used)."""
    inner = _embedded_ipv4(ip)
    if inner is not None and (problem := _refusal(inner, allow_loopback=allow_loopback)) is not None:
        return problem
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return None  # judged by the IPv4 address inside: ::ffff:0:0/96 itself counts as reserved
    if ip in _METADATA:
        return f"{ip} is the cloud metadata address"
    if ip.is_loopback:
        return None if allow_loopback else f"{ip} is a loopback address"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_private:
        return f"{ip} is a private address"
    if ip.is_reserved or not ip.is_global:
        return f"{ip} is not a public address"
    return None


def _is_loopback(ip: IPAddress) -> bool:
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _static_check(url: httpx.URL, field: str, where: str, *,
                  allow_loopback: bool) -> tuple[str, int, IPAddress | None]:
    """The rules that need no DNS: scheme, credentials, port, and the address when the host is one.

    Returns (host, port, the host as an address or None for a name).
    """
    def refuse(reason: str) -> ImageInputError:
        return ImageInputError(field, f"{where} refused: {reason}", code="url_refused")

    if url.scheme not in ("https", "http"):
        raise refuse(f"scheme {url.scheme[:10]!r} is not allowed; use https")
    if url.scheme == "http" and not allow_loopback:
        raise refuse("plain http is not allowed; use https")
    if not url.host:
        raise ImageInputError(field, f"{where} has no host", code="bad_url")
    if url.userinfo:
        raise refuse("URLs with credentials (user:password@) are not allowed")
    port = url.port or (443 if url.scheme == "https" else 80)
    if not 0 < port < 65536:
        raise ImageInputError(field, f"{where} has an invalid port", code="bad_url")
    host = url.raw_host.decode("ascii").lower()
    try:
        literal = _ip_literal(host)
    except ValueError:
        raise ImageInputError(field, f"{where} has an invalid numeric host", code="bad_url") from None
    if literal is None and not _HOSTNAME.fullmatch(host):
        raise ImageInputError(field, f"{where} has an invalid host name", code="bad_url")
    if literal is not None and (problem := _refusal(literal, allow_loopback=allow_loopback)) is not None:
        raise refuse(problem)
    return host, port, literal


def check_url(url: str, *, field: str, allow_loopback: bool = False) -> None:
    """The checks possible without DNS or a connection (ingest runs them to answer 422 at once);
    :meth:`SafeFetcher.fetch` runs them again, and the rest, when it fetches."""
    _static_check(SafeFetcher._parse(url, field), field, "the URL", allow_loopback=allow_loopback)


# --- fetching ----------------------------------------------------------------------------------

_REDIRECTS = {301, 302, 303, 307, 308}
_ACCEPT = "image/png, image/jpeg, image/webp"


def _display(url: httpx.URL) -> str:
    """``scheme://host[:port]/path`` with no userinfo, query or fragment, cut short."""
    path = url.path if len(url.path) <= 80 else url.path[:79] + "…"
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}{path}"


@dataclass(frozen=True)
class _Target:
    """A checked URL: where to connect (the validated addresses) and what to call the host."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]
    host_header: str
    sni_hostname: str | None


class SafeFetcher:
    """Fetches image URLs under the SSRF rules of this module's docstring."""

    def __init__(self, http: httpx.AsyncClient | None = None, *, allow_loopback: bool = False,
                 max_bytes: int = MAX_IMAGE_BYTES, timeout_s: float = 15.0, max_redirects: int = 3,
                 resolver: Resolver | None = None) -> None:
        self._owns_http = http is None
        # trust_env=False: an HTTPS_PROXY from the environment would resolve the name a second time.
        self._http = http if http is not None else httpx.AsyncClient(trust_env=False, follow_redirects=False,
                                                                     timeout=httpx.Timeout(timeout_s))
        self._allow_loopback = allow_loopback
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._max_redirects = max_redirects
        self._resolve = resolver or _getaddrinfo

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def fetch(self, url: str, *, field: str) -> ValidImage:
        """The image at ``url``, checked like a data URL's; an ``ImageInputError`` otherwise."""
        first = self._parse(url, field)
        try:
            async with asyncio.timeout(self._timeout_s):
                data = await self._fetch(first, field)
        except TimeoutError:
            raise ImageInputError(field, f"{_display(first)} did not answer within {self._timeout_s:g}s",
                                  code="fetch_timeout", retryable=True) from None
        return await asyncio.to_thread(validate_image_bytes, data, field=field, max_bytes=self._max_bytes)

    async def _fetch(self, first: httpx.URL, field: str) -> bytes:
        current = first
        for hop in range(self._max_redirects + 1):
            where = _display(current) if hop == 0 else f"redirect to {_display(current)}"
            target = await self._check(current, field, where)
            response = await self._open(target, field, where)
            try:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise ImageInputError(field, f"{where} answered HTTP {response.status_code} without a "
                                              "Location", code="fetch_failed")
                    try:
                        current = self._parse(current.join(location), field)
                    except httpx.InvalidURL:
                        raise ImageInputError(field, f"{where} redirects to an invalid URL", code="bad_url") from None
                    continue
                return await self._body(response, field, where)
            finally:
                await response.aclose()
        raise ImageInputError(field, f"{_display(first)} redirected more than "
                              f"{self._max_redirects} times", code="url_refused")

    @staticmethod
    def _parse(url: str | httpx.URL, field: str) -> httpx.URL:
        if isinstance(url, str) and (any(c.isspace() or ord(c) < 0x20 for c in url) or "\\" in url):
            raise ImageInputError(field, "is not a valid URL", code="bad_url")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise ImageInputError(field, "is not a valid URL", code="bad_url") from None
        if not parsed.scheme:
            raise ImageInputError(field, "is not an absolute URL", code="bad_url")
        return parsed

    async def _check(self, url: httpx.URL, field: str, where: str) -> _Target:
        """Apply the scheme, userinfo and address rules to ``url``; resolve its host once."""
        def refuse(reason: str) -> ImageInputError:
            return ImageInputError(field, f"{where} refused: {reason}", code="url_refused")

        host, port, literal = _static_check(url, field, where, allow_loopback=self._allow_loopback)
        if literal is not None:
            addresses: tuple[IPAddress, ...] = (literal,)
        else:
            addresses = await self._lookup(host, port, field, where)
        for ip in addresses:
            problem = _refusal(ip, allow_loopback=self._allow_loopback)
            if problem is not None:
                if literal is None:
                    # Which internal address a name has is not the caller's business, unless it is metadata.
                    kind = problem.split(" is ", 1)[1]
                    metadata = ip in _METADATA or _embedded_ipv4(ip) in _METADATA
                    problem = f"{host} resolves to {f'{ip}, {kind}' if metadata else kind}"
                raise refuse(problem)
        if url.scheme == "http" and not all(_is_loopback(ip) for ip in addresses):
            raise refuse("plain http is only allowed to loopback; use https")
        host_header = url.netloc.decode("ascii")
        sni = host if url.scheme == "https" and literal is None else None
        return _Target(url=url, addresses=addresses, host_header=host_header, sni_hostname=sni)

    async def _lookup(self, host: str, port: int, field: str, where: str) -> tuple[IPAddress, ...]:
        try:
            found = await self._resolve(host, port)
        except socket.gaierror as exc:
            transient = exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None))
            raise ImageInputError(field, f"{where}: host {host} could not be resolved", code="fetch_failed",
                                  retryable=transient) from None
        except OSError:
            raise ImageInputError(field, f"{where}: host {host} could not be resolved", code="fetch_failed",
                                  retryable=True) from None
        addresses = []
        for text in found:
            try:
                addresses.append(ipaddress.ip_address(text.split("%", 1)[0]))
            except ValueError:
                raise ImageInputError(field, f"{where}: host {host} resolved to something that is not an "
                                      "address", code="fetch_failed") from None
        if not addresses:
            raise ImageInputError(field, f"{where}: host {host} has no addresses", code="fetch_failed",
                                  retryable=True)
        return tuple(dict.fromkeys(addresses))

    async def _open(self, target: _Target, field: str, where: str) -> httpx.Response:
        """Send the request to the checked addresses in turn (pinned: never resolved again)."""
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        headers = {"Host": target.host_header, "Accept": _ACCEPT, "Accept-Encoding": "identity",
                   "User-Agent": "forgeline-comparer"}
        failure: httpx.HTTPError | None = None
        for ip in target.addresses:
            request = self._http.build_request("GET", target.url.copy_with(host=str(ip)), headers=headers,
                                               extensions=extensions, timeout=httpx.Timeout(self._timeout_s))
            try:
                # auth=None: credentials configured on a shared client never go to caller-chosen hosts.
                return await self._http.send(request, stream=True, follow_redirects=False, auth=None)
            except httpx.ConnectError as exc:
                failure = exc  # the next address may answer, as Happy Eyeballs would find
            except httpx.TimeoutException:
                raise ImageInputError(field, f"{where} did not answer in time", code="fetch_timeout",
                                      retryable=True) from None
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, field, where) from None
        assert failure is not None
        raise self._transport_error(failure, field, where) from None

    @staticmethod
    def _transport_error(exc: httpx.HTTPError, field: str, where: str) -> ImageInputError:
        # The exception's text may quote the (signed) URL: only its type goes into the message.
        return ImageInputError(field, f"{where} could not be fetched ({type(exc).__name__})",
                               code="fetch_failed", retryable=True)

    async def _body(self, response: httpx.Response, field: str, where: str) -> bytes:
        status = response.status_code
        if status >= 300:
            transient = status >= 500 or status in (408, 429)
            raise ImageInputError(field, f"{where} answered HTTP {status}", code="fetch_failed",
                                  retryable=transient)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ImageInputError(field, f"{where} answered with Content-Encoding {encoding[:20]}; only "
                                  "uncompressed bodies are accepted", code="fetch_failed")
        too_large = ImageInputError(field, f"{where} is larger than {self._max_bytes} bytes", code="too_large",
                                    status=413)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():  # identity only (checked above): raw bytes
                size += len(chunk)
                if size > self._max_bytes:
                    raise too_large
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise ImageInputError(field, f"{where} did not answer in time", code="fetch_timeout",
                                  retryable=True) from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, field, where) from None
        return b"".join(chunks)
