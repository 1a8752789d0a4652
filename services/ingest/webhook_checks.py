"""Webhook URLs checked at the door: a URL that is not https or points at a private, loopback,
link-local or metadata address is a 422 on its field at submission, not a failed delivery later."""

from __future__ import annotations

from services.common.contracts import GenerationRequested
from services.common.fetch import checked_url
from services.common.images import ImageFetchUnavailable, ImageInputError
from services.common.webhooks import RedisWebhookStore
from services.ingest.deps import IngestDeps
from services.ingest.errors import InvalidRequest


def store_of(deps: IngestDeps) -> RedisWebhookStore:
    return RedisWebhookStore(deps.redis, deps.keys)


def _invalid(field: str, message: str, code: str = "webhook_refused") -> InvalidRequest:
    return InvalidRequest([{"type": code, "loc": ["body", field], "msg": message}])


async def check_url_allowed(url: str, *, field: str, deps: IngestDeps) -> None:
    """422 when ``url`` breaks the SSRF rules: not https, credentials, or an address (literal or resolved)
    that is private, loopback, link-local or metadata. A name that does not resolve right now passes:
    every attempt checks again."""
    try:
        await checked_url(url, field=field, allow_loopback=deps.settings.allow_loopback_urls)
    except ImageFetchUnavailable:
        return
    except ImageInputError as exc:
        raise _invalid(field, exc.reason, exc.code) from None


async def check_job_webhook(request: GenerationRequested, deps: IngestDeps) -> None:
    """A job's ``webhook_url`` must be allowed, and its tenant must have a secret to sign with."""
    if request.webhook_url is None:
        return
    await check_url_allowed(request.webhook_url, field="webhook_url", deps=deps)
    if await store_of(deps).secret(request.tenant) is None:
        raise _invalid("webhook_url", "this tenant has no signing secret for webhooks yet: create it once with "
                                      "POST /v1/webhooks/secret, then verify deliveries with it", "no_signing_secret")
