"""What the provider adapter tests share: an adapter talking to its fake server on loopback
(``ProviderUnderTest``), and the checks every adapter must pass: injected failures map onto the
right error class and code, the fake's per-key rate limit comes back as a Retry-After, and no
error ever carries the key, even when the provider quotes it back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import httpx
import pytest
from fastapi import FastAPI

from services.common.contracts import ImageSpec
from services.fakeproviders.base import FakeProvider, Knobs
from services.fakeproviders.server import serve_fake
from services.providers.port import (
    GeneratedImage,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)

SHIELD = ImageSpec(prompt="a shield")


class Adapter(Protocol):
    """What every provider adapter is: a name, and generate(spec, token)."""

    name: str

    async def generate(self, spec: ImageSpec, token: str | None) -> GeneratedImage: ...


A = TypeVar("A", bound=Adapter)


@dataclass(frozen=True)
class ProviderUnderTest(Generic[A]):
    """One provider's test setup: its fake server, its adapter, and how one is pointed at the other."""

    fake_name: str  # the FakeProvider's name
    create_app: Callable[..., FastAPI]  # the fake's create_app(fake, **fake_options)
    adapter_class: Callable[[Any, httpx.AsyncClient], A]
    config_class: Callable[..., Any]
    defaults: dict[str, Any] = field(default_factory=dict)  # config fields every test starts from
    spec: ImageSpec = SHIELD  # what error() asks for

    def fake(self, *fail_next: str, **knobs: Any) -> FakeProvider:
        """A fresh fake whose next requests fail as ``fail_next`` says, one each."""
        return FakeProvider(self.fake_name, Knobs(fail_next=list(fail_next), **knobs))

    def build(self, url: str, http: httpx.AsyncClient, **config: Any) -> A:
        """The adapter for the provider at ``url``: ``defaults``, then ``config``."""
        return self.adapter_class(self.config_class(**({"base_url": url} | self.defaults | config)), http)

    @asynccontextmanager
    async def adapter(self, fake: FakeProvider | None = None, *, sent: list[httpx.Request] | None = None,
                      fake_options: dict[str, Any] | None = None, **config: Any) -> AsyncIterator[A]:
        """An adapter talking to ``fake`` (a fresh one by default) served on loopback.

        ``fake_options`` go to the fake's ``create_app``; every request the adapter sends, as the
        client saw it, is appended to ``sent``.
        """
        async def record(request: httpx.Request) -> None:
            if sent is not None:
                sent.append(request)

        app = self.create_app(fake or FakeProvider(self.fake_name), **(fake_options or {}))
        async with serve_fake(app) as url, httpx.AsyncClient(event_hooks={"request": [record]}) as http:
            yield self.build(url, http, **config)

    async def error(self, fake: FakeProvider | None, token: str | None, *,
                    fake_options: dict[str, Any] | None = None, **config: Any) -> ProviderError:
        """The error one ``generate(self.spec, token)`` raises; it must name the adapter that raised it."""
        async with self.adapter(fake, fake_options=fake_options, **config) as provider:
            with pytest.raises(ProviderError) as caught:
                await provider.generate(self.spec, token)
            assert caught.value.provider == provider.name
        return caught.value


async def check_error_maps(under_test: ProviderUnderTest[Any], token: str, mode: str,
                           error_class: type[ProviderError], code: str, text: str) -> ProviderError:
    """A failure injected as ``mode`` (429s saying Retry-After: 12) is an ``error_class`` with
    ``code`` whose message quotes the provider's ``text``."""
    error = await under_test.error(under_test.fake(mode, retry_after_s=12), token)
    assert type(error) is error_class
    assert error.code == code
    assert text in error.message
    if isinstance(error, RateLimitedError):
        assert error.retry_after_s == 12.0
    return error


def assert_retryable(error: ProviderError, code: str) -> None:
    """A plain ``RetryableProviderError`` (no rate limit, no key rejected) with ``code``."""
    assert type(error) is RetryableProviderError
    assert error.code == code


async def check_per_key_rate_limit(under_test: ProviderUnderTest[Any], token: str) -> None:
    """Two requests a key per 5 s: the third is rate limited for the window, another key is not."""
    async with under_test.adapter(under_test.fake(rate_limit_per_key=2, rate_limit_window_s=5)) as provider:
        await provider.generate(SHIELD, token)
        await provider.generate(SHIELD, token)
        with pytest.raises(RateLimitedError) as caught:
            await provider.generate(SHIELD, token)
        await provider.generate(SHIELD, "another-key")  # the fake limits per key
    assert caught.value.retry_after_s == 5.0


async def check_token_never_in_errors(under_test: ProviderUnderTest[Any], token: str, mode: str, *,
                                      fragment: bool = False) -> None:
    """The fake quotes the Authorization header in its error (``echo_auth_in_errors``); the
    adapter's error still carries no trace of the token (nor its last 8 characters, with ``fragment``)."""
    error = await under_test.error(under_test.fake(mode), token, fake_options={"echo_auth_in_errors": True})
    assert "[redacted]" in error.message  # the fake did echo it, so this proves the scrubbing
    for text in (str(error), repr(error), error.message, *map(str, error.args)):
        assert token not in text
        if fragment:
            assert token[-8:] not in text
