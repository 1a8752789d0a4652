"""Fetching image URLs without being turned against our own network (SSRF).

For the first URL and for every redirect (followed by hand, at most ``max_redirects``):

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

What the fetcher returns went through :func:`~services.common.images.validate_image_bytes`;
its errors are :class:`~services.common.images.ImageInputError`: ``ImageFetchUnavailable`` for
transient failures, ``ImageRejected`` otherwise. Messages name at most ``scheme://host/path`` of a
URL: query strings are often signed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import httpx

from services.common.images import (
    MAX_IMAGE_BYTES,
    ImageFetchUnavailable,
    ImageRejected,
    ValidImage,
    validate_image_bytes,
)

__all__ = ["Resolver", "SafeFetcher", "Target", "check_url", "checked_target", "checked_url", "display_url"]

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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
    def refuse(reason: str) -> ImageRejected:
        return ImageRejected(field, f"{where} refused: {reason}", code="url_refused")

    if url.scheme not in ("https", "http"):
        raise refuse(f"scheme {url.scheme[:10]!r} is not allowed; use https")
    if url.scheme == "http" and not allow_loopback:
        raise refuse("plain http is not allowed; use https")
    if not url.host:
        raise ImageRejected(field, f"{where} has no host", code="bad_url")
    if url.userinfo:
        raise refuse("URLs with credentials (user:password@) are not allowed")
    port = url.port or (443 if url.scheme == "https" else 80)
    if not 0 < port < 65536:
        raise ImageRejected(field, f"{where} has an invalid port", code="bad_url")
    host = url.raw_host.decode("ascii").lower()
    try:
        literal = _ip_literal(host)
    except ValueError:
        raise ImageRejected(field, f"{where} has an invalid numeric host", code="bad_url") from None
    if literal is None and not _HOSTNAME.fullmatch(host):
        raise ImageRejected(field, f"{where} has an invalid host name", code="bad_url")
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


def display_url(url: httpx.URL) -> str:
    """``scheme://host[:port]/path`` with no userinfo, query or fragment, cut short."""
    path = url.path if len(url.path) <= 80 else url.path[:79] + "…"
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host}{port}{path}"


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (the validated addresses) and what to call the host."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]
    host_header: str
    sni_hostname: str | None


async def checked_target(url: httpx.URL, field: str, where: str, *, allow_loopback: bool = False,
                         resolve: Resolver = _getaddrinfo) -> Target:
    """Apply the scheme, userinfo and address rules to ``url``; resolve its host once (``where`` names it
    in messages). Connect only to the returned addresses. Raises ``ImageInputError``."""
    def refuse(reason: str) -> ImageRejected:
        return ImageRejected(field, f"{where} refused: {reason}", code="url_refused")

    host, port, literal = _static_check(url, field, where, allow_loopback=allow_loopback)
    if literal is not None:
        addresses: tuple[IPAddress, ...] = (literal,)
    else:
        addresses = await _lookup(resolve, host, port, field, where)
    for ip in addresses:
        problem = _refusal(ip, allow_loopback=allow_loopback)
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
    return Target(url=url, addresses=addresses, host_header=host_header, sni_hostname=sni)


async def _lookup(resolve: Resolver, host: str, port: int, field: str, where: str) -> tuple[IPAddress, ...]:
    try:
        found = await resolve(host, port)
    except socket.gaierror as exc:
        transient = exc.errno in (socket.EAI_AGAIN, getattr(socket, "EAI_SYSTEM", None))
        error = ImageFetchUnavailable if transient else ImageRejected
        raise error(field, f"{where}: host {host} could not be resolved", code="fetch_failed") from None
    except OSError:
        raise ImageFetchUnavailable(field, f"{where}: host {host} could not be resolved",
                                    code="fetch_failed") from None
    addresses = []
    for text in found:
        try:
            addresses.append(ipaddress.ip_address(text.split("%", 1)[0]))
        except ValueError:
            raise ImageRejected(field, f"{where}: host {host} resolved to something that is not an "
                                "address", code="fetch_failed") from None
    if not addresses:
        raise ImageFetchUnavailable(field, f"{where}: host {host} has no addresses", code="fetch_failed")
    return tuple(dict.fromkeys(addresses))


async def checked_url(url: str, *, field: str, allow_loopback: bool = False,
                      resolve: Resolver = _getaddrinfo) -> Target:
    """``url`` checked and its host resolved once, for a caller that sends its own request (a webhook).

    The caller connects to ``Target.addresses`` only, sends ``Host: host_header`` and the
    ``sni_hostname`` extension, and follows no redirect. Raises ``ImageInputError`` like ``fetch``.
    """
    return await checked_target(SafeFetcher._parse(url, field), field, "the URL", allow_loopback=allow_loopback,
                                resolve=resolve)


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
            raise ImageFetchUnavailable(field, f"{display_url(first)} did not answer within {self._timeout_s:g}s",
                                        code="fetch_timeout") from None
        return await asyncio.to_thread(validate_image_bytes, data, field=field, max_bytes=self._max_bytes)

    async def _fetch(self, first: httpx.URL, field: str) -> bytes:
        current = first
        for hop in range(self._max_redirects + 1):
            where = display_url(current) if hop == 0 else f"redirect to {display_url(current)}"
            target = await self._check(current, field, where)
            response = await self._open(target, field, where)
            try:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise ImageRejected(field, f"{where} answered HTTP {response.status_code} without a "
                                            "Location", code="fetch_failed")
                    try:
                        current = self._parse(current.join(location), field)
                    except httpx.InvalidURL:
                        raise ImageRejected(field, f"{where} redirects to an invalid URL", code="bad_url") from None
                    continue
                return await self._body(response, field, where)
            finally:
                await response.aclose()
        raise ImageRejected(field, f"{display_url(first)} redirected more than "
                            f"{self._max_redirects} times", code="url_refused")

    @staticmethod
    def _parse(url: str | httpx.URL, field: str) -> httpx.URL:
        if isinstance(url, str) and (any(c.isspace() or ord(c) < 0x20 for c in url) or "\\" in url):
            raise ImageRejected(field, "is not a valid URL", code="bad_url")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            raise ImageRejected(field, "is not a valid URL", code="bad_url") from None
        if not parsed.scheme:
            raise ImageRejected(field, "is not an absolute URL", code="bad_url")
        return parsed

    async def _check(self, url: httpx.URL, field: str, where: str) -> Target:
        return await checked_target(url, field, where, allow_loopback=self._allow_loopback, resolve=self._resolve)

    async def _open(self, target: Target, field: str, where: str) -> httpx.Response:
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
                raise ImageFetchUnavailable(field, f"{where} did not answer in time", code="fetch_timeout") from None
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, field, where) from None
        assert failure is not None
        raise self._transport_error(failure, field, where) from None

    @staticmethod
    def _transport_error(exc: httpx.HTTPError, field: str, where: str) -> ImageFetchUnavailable:
        # The exception's text may quote the (signed) URL: only its type goes into the message.
        return ImageFetchUnavailable(field, f"{where} could not be fetched ({type(exc).__name__})",
                                     code="fetch_failed")

    async def _body(self, response: httpx.Response, field: str, where: str) -> bytes:
        status = response.status_code
        if status >= 300:
            transient = status >= 500 or status in (408, 429)
            error = ImageFetchUnavailable if transient else ImageRejected
            raise error(field, f"{where} answered HTTP {status}", code="fetch_failed")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ImageRejected(field, f"{where} answered with Content-Encoding {encoding[:20]}; only "
                                "uncompressed bodies are accepted", code="fetch_failed")
        too_large = ImageRejected(field, f"{where} is larger than {self._max_bytes} bytes", code="too_large",
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
            raise ImageFetchUnavailable(field, f"{where} did not answer in time", code="fetch_timeout") from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, field, where) from None
        return b"".join(chunks)
