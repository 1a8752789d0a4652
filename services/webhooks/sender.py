"""One signed POST to one receiver, under the comparer's SSRF rules (``services.common.fetch``).

The host is resolved once and every address must be public (loopback only with the tests-only
setting); the request goes to the checked address with the original ``Host`` and TLS name, so a
second DNS answer cannot redirect it; a redirect is a failed attempt, never followed; the whole
attempt, DNS included, has one timeout. The body is signed with the ``standardwebhooks`` package:
``webhook-id`` (the same on every attempt), ``webhook-timestamp`` (this attempt's) and
``webhook-signature``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from pydantic import SecretStr
from standardwebhooks import Webhook

from services.common.fetch import Target, checked_url, display_url
from services.common.images import ImageFetchUnavailable, ImageInputError

USER_AGENT = "forgeline-webhooks/1"


@dataclass(frozen=True)
class SendResult:
    """What one attempt came to. ``refused``: the URL breaks the SSRF rules (trying again cannot help)."""

    status: int | None
    latency_ms: float
    error: str | None = None
    retry_after: str | None = None
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def signed_headers(secret: SecretStr, webhook_id: str, payload: str, at: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for ``payload`` sent at ``at``."""
    signature = Webhook(secret.get_secret_value()).sign(webhook_id, at, payload)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


class WebhookSender:
    def __init__(self, http: httpx.AsyncClient, *, timeout_s: float, allow_loopback: bool = False) -> None:
        # The client must not follow redirects or use a proxy (a proxy would resolve the name again).
        self._http = http
        self._allow_loopback = allow_loopback
        self._timeout_s = timeout_s

    async def send(self, url: str, *, webhook_id: str, payload: str, secret: SecretStr) -> SendResult:
        started = time.perf_counter()

        def result(status: int | None = None, error: str | None = None, **more: object) -> SendResult:
            return SendResult(status, round((time.perf_counter() - started) * 1000, 1), error, **more)  # type: ignore[arg-type]

        try:
            async with asyncio.timeout(self._timeout_s):
                target = await checked_url(url, field="webhook_url", allow_loopback=self._allow_loopback)
                response = await self._post(target, signed_headers(secret, webhook_id, payload, datetime.now(UTC)),
                                            payload)
        except ImageFetchUnavailable as exc:  # DNS failed for now
            return result(error=exc.reason)
        except ImageInputError as exc:
            return result(error=exc.reason, refused=True)
        except TimeoutError:
            return result(error=f"no answer within {self._timeout_s:g} s")
        except httpx.HTTPError as exc:  # its text may quote the URL: the type alone
            return result(error=f"could not connect ({type(exc).__name__})")
        status = response.status_code
        if 200 <= status < 300:
            return result(status)
        if 300 <= status < 400:
            return result(status, f"HTTP {status}: redirects are not followed")
        return result(status, f"HTTP {status}", retry_after=response.headers.get("retry-after"))

    async def _post(self, target: Target, signature: dict[str, str], payload: str) -> httpx.Response:
        """POST to each checked address in turn (pinned, never resolved again) until one connects."""
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        headers = {"Host": target.host_header, "Content-Type": "application/json", "User-Agent": USER_AGENT,
                   **signature}
        failure: httpx.ConnectError | None = None
        for ip in target.addresses:
            request = self._http.build_request("POST", target.url.copy_with(host=str(ip)), headers=headers,
                                               content=payload.encode(), extensions=extensions,
                                               timeout=httpx.Timeout(self._timeout_s))
            try:
                # auth=None: credentials configured on a shared client never go to caller-chosen hosts.
                response = await self._http.send(request, stream=True, follow_redirects=False, auth=None)
            except httpx.ConnectError as exc:
                failure = exc
                continue
            await response.aclose()  # the body is not ours to read
            return response
        assert failure is not None
        raise httpx.ConnectError(f"no address of {display_url(target.url)} accepted the connection") from failure
