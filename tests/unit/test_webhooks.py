"""Webhook decisions without services: the retry schedule, signatures, SSRF refusals, what one attempt makes of an answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from services.common import contracts as c
from services.common.fetch import checked_url
from services.common.images import ImageRejected
from services.common.webhooks import Endpoint, message_id, new_secret
from services.ingest.errors import InvalidRequest
from services.ingest.webhook_checks import check_url_allowed
from services.webhooks.handlers import payload_of
from services.webhooks.schedule import next_delay
from services.webhooks.sender import WebhookSender, signed_headers
from services.webhooks.settings import SPEC_SCHEDULE_S, WebhooksSettings


def _exact(low: float, high: float) -> float:
    return (low + high) / 2  # no jitter: the middle of the range


def test_the_default_schedule_is_the_standard_webhooks_one() -> None:
    assert WebhooksSettings().schedule_s == SPEC_SCHEDULE_S == (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


def test_each_failure_waits_the_next_step_and_the_last_one_ends_it() -> None:
    waits = [next_delay(SPEC_SCHEDULE_S, made, uniform=_exact) for made in range(1, 9)]
    assert waits == [5, 300, 1800, 7200, 18000, 36000, 36000, None]


def test_jitter_stays_within_its_share() -> None:
    lowest = next_delay(SPEC_SCHEDULE_S, 2, jitter=0.2, uniform=lambda low, _high: low)
    highest = next_delay(SPEC_SCHEDULE_S, 2, jitter=0.2, uniform=lambda _low, high: high)
    assert (lowest, highest) == pytest.approx((240.0, 360.0))


def test_a_longer_retry_after_wins_a_shorter_one_does_not_bring_it_forward_and_it_is_capped() -> None:
    assert next_delay(SPEC_SCHEDULE_S, 1, retry_after="120", uniform=_exact) == 120
    assert next_delay(SPEC_SCHEDULE_S, 2, retry_after="1", uniform=_exact) == 300
    assert next_delay(SPEC_SCHEDULE_S, 1, retry_after="999999", max_retry_after_s=3600, uniform=_exact) == 3600
    assert next_delay(SPEC_SCHEDULE_S, 1, retry_after="soon", uniform=_exact) == 5


def test_signed_headers_verify_with_the_standardwebhooks_library_and_a_changed_body_does_not() -> None:
    secret = new_secret()
    assert secret.get_secret_value().startswith("whsec_")
    body = json.dumps({"type": "generation.completed", "data": {"job_id": "abc"}})
    headers = signed_headers(secret, "msg_1", body, datetime.now(UTC))
    assert Webhook(secret.get_secret_value()).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret.get_secret_value()).verify(body.replace("abc", "abd"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret().get_secret_value()).verify(body, headers)


def test_the_webhook_id_is_the_same_for_a_job_event_and_differs_between_events() -> None:
    assert message_id("job12345", "generation.completed") == message_id("job12345", "generation.completed")
    assert message_id("job12345", "generation.completed") != message_id("job12345", "generation.failed")
    assert message_id("job12345", "generation.completed") != message_id("job12346", "generation.completed")


def test_an_endpoint_never_shows_its_secret_in_repr() -> None:
    endpoint = Endpoint(endpoint_id="ep_1", url="https://example.com/h", secret=new_secret(),
                        created_at=datetime.now(UTC))
    assert endpoint.secret.get_secret_value() not in repr(endpoint)
    assert endpoint.secret.get_secret_value() in endpoint.model_dump_json()  # what Redis keeps


def test_the_payload_is_the_event_under_type_and_data_without_the_webhook_itself() -> None:
    failed = c.GenerationFailed(job_id="job12345", tenant="studio", webhook_url="https://example.com/h",
                                error=c.ErrorInfo(code="provider_rejected", message="nope", stage="generator",
                                                  retryable=False))
    payload = json.loads(payload_of(failed))
    assert payload["type"] == "generation.failed"
    assert payload["data"]["job_id"] == "job12345" and payload["data"]["error"]["code"] == "provider_rejected"
    assert "webhook_url" not in payload["data"] and "trace" not in payload["data"]


def _resolving_to(*addresses: str):
    async def resolve(_host: str, _port: int) -> list[str]:
        return list(addresses)
    return resolve


@pytest.mark.parametrize(("url", "resolved", "reason"), [
    ("https://10.0.0.5/hook", (), "private"),
    ("https://hooks.example.com/x", ("192.168.1.9",), "private"),
    ("https://hooks.example.com/x", ("169.254.169.254",), "metadata"),
    ("https://hooks.example.com/x", ("93.184.216.34", "127.0.0.1"), "loopback"),
    ("https://[::ffff:10.0.0.1]/x", (), "private"),
    ("https://2130706433/x", (), "loopback"),
    ("http://hooks.example.com/x", ("93.184.216.34",), "plain http"),
    ("https://user:pw@hooks.example.com/x", ("93.184.216.34",), "credentials"),
])
async def test_webhook_urls_on_internal_addresses_are_refused(url: str, resolved: tuple[str, ...], reason: str) -> None:
    with pytest.raises(ImageRejected) as refused:
        await checked_url(url, field="webhook_url", resolve=_resolving_to(*resolved))
    assert reason in refused.value.reason and refused.value.field == "webhook_url"


async def test_loopback_is_allowed_only_with_the_tests_only_setting() -> None:
    with pytest.raises(ImageRejected):
        await checked_url("http://127.0.0.1:9/hook", field="webhook_url")
    target = await checked_url("http://127.0.0.1:9/hook", field="webhook_url", allow_loopback=True)
    assert [str(ip) for ip in target.addresses] == ["127.0.0.1"]
    with pytest.raises(ImageRejected):  # the test setting opens loopback, nothing else
        await checked_url("http://10.0.0.1/hook", field="webhook_url", allow_loopback=True)


async def test_ingest_refuses_a_private_webhook_url_naming_the_field() -> None:
    deps = SimpleNamespace(settings=SimpleNamespace(allow_loopback_urls=False))
    with pytest.raises(InvalidRequest) as refused:
        await check_url_allowed("https://10.1.2.3/hook", field="webhook_url", deps=deps)  # type: ignore[arg-type]
    (error,) = refused.value.errors
    assert error["loc"] == ["body", "webhook_url"] and "private" in error["msg"] and "10.1.2.3/hook" not in error["msg"]


def _sender(answer: httpx.Response, seen: list[httpx.Request]) -> WebhookSender:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle), follow_redirects=False)
    return WebhookSender(http, timeout_s=15, allow_loopback=True)


async def test_an_attempt_posts_the_signed_body_and_a_2xx_is_delivered() -> None:
    seen: list[httpx.Request] = []
    secret = SecretStr(new_secret().get_secret_value())
    result = await _sender(httpx.Response(204), seen).send("http://127.0.0.1:8123/hook", webhook_id="msg_x",
                                                           payload='{"a":1}', secret=secret)
    assert result.delivered and result.status == 204 and result.error is None
    (request,) = seen
    assert request.method == "POST" and request.url.host == "127.0.0.1" and request.headers["host"] == "127.0.0.1:8123"
    assert Webhook(secret.get_secret_value()).verify(request.content, dict(request.headers)) == {"a": 1}


async def test_a_redirect_is_a_failed_attempt_never_followed() -> None:
    seen: list[httpx.Request] = []
    answer = httpx.Response(302, headers={"location": "http://169.254.169.254/latest/meta-data"})
    result = await _sender(answer, seen).send("http://127.0.0.1:8123/hook", webhook_id="msg_x", payload="{}",
                                              secret=new_secret())
    assert not result.delivered and result.status == 302 and "redirects are not followed" in result.error
    assert len(seen) == 1


async def test_a_refused_url_is_never_contacted_and_says_why() -> None:
    seen: list[httpx.Request] = []
    result = await _sender(httpx.Response(200), seen).send("https://10.0.0.7/hook", webhook_id="msg_x", payload="{}",
                                                           secret=new_secret())
    assert result.refused and not result.delivered and "private" in result.error and seen == []


async def test_a_429_carries_its_retry_after() -> None:
    seen: list[httpx.Request] = []
    result = await _sender(httpx.Response(429, headers={"retry-after": "42"}), seen).send(
        "http://127.0.0.1:8123/hook", webhook_id="msg_x", payload="{}", secret=new_secret())
    assert (result.status, result.retry_after, result.refused) == (429, "42", False)
