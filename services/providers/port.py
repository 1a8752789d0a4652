"""The port every image provider implements, and the errors it may raise.

A provider turns an :class:`~services.common.contracts.ImageSpec` into image bytes. The
generator service only talks to :class:`ImageProvider`; which provider sits behind it
(procedural, a hosted model, ...) is configuration.

Error hierarchy (the provider branch of :mod:`services.common.errors`)::

    ProviderError                   base; .provider, .code — catch this one, raise a subclass
    ├── RetryableProviderError      (Retryable) may succeed later: HTTP 5xx, timeouts, connection errors
    │   ├── RateLimitedError        HTTP 429 / capacity: cool the key until .retry_after_s
    │   └── KeyRejectedError        401 / 403 / insufficient_quota / daily quota: disable the key;
    │                               the job itself may still succeed with another key
    └── PermanentProviderError      (Permanent) will fail again: HTTP 400, content policy, failed predictions
        └── JobAlreadyFinished      the job became terminal elsewhere: its call was cancelled, publish nothing

The generator retries a :class:`RetryableProviderError` (with backoff, within the job's
deadline) and fails the job at once on a :class:`PermanentProviderError`. ``code`` is a short
machine-readable reason (``"rate_limited"``, ``"timeout"``, ``"content_policy"``, ...) that
ends up in :class:`~services.common.contracts.ErrorInfo`.

Messages travel to callers, logs and Kafka, so they must never contain secrets: no API keys,
tokens, signed URLs or authorization headers. Say what went wrong, not with which credentials.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from services.common.contracts import ImageSpec
from services.common.errors import Permanent, PipelineError, Retryable

if TYPE_CHECKING:
    from services.common.ports import ProviderCalls

__all__ = [
    "GeneratedImage",
    "ImageProvider",
    "JobAlreadyFinished",
    "ResumableCall",
    "KeyRejectedError",
    "PermanentProviderError",
    "RateLimitedError",
    "ProviderError",
    "RetryableProviderError",
]

ContentType = Literal["image/png", "image/jpeg", "image/webp"]


@dataclass(frozen=True)
class GeneratedImage:
    """What a provider returns: the bytes and where they came from."""

    data: bytes
    content_type: ContentType
    provider: str
    model: str | None
    deterministic: bool  # True when the same spec always gives the same bytes
    placeholder: bool = False  # True for a stand-in made when no real provider could serve

    def __repr__(self) -> str:  # the bytes would flood a log line
        return (f"GeneratedImage({len(self.data)} bytes, content_type={self.content_type!r}, "
                f"provider={self.provider!r}, model={self.model!r}, deterministic={self.deterministic}, "
                f"placeholder={self.placeholder})")


class ProviderError(PipelineError):
    """A provider could not produce an image. Base of the provider errors; catch this one, raise
    a :class:`RetryableProviderError` or :class:`PermanentProviderError`."""

    def __init__(self, message: str, *, provider: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.code = code

    def __str__(self) -> str:
        return f"{self.provider}: {self.message} ({self.code})"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(message={self.message!r}, provider={self.provider!r}, "
                f"code={self.code!r})")


class RetryableProviderError(ProviderError, Retryable):
    """The same request may succeed later: rate limits (429), server errors (5xx), timeouts,
    connection errors."""

    def __init__(self, message: str, *, provider: str, code: str = "unavailable") -> None:
        super().__init__(message, provider=provider, code=code)


class RateLimitedError(RetryableProviderError):
    """The provider throttled this key (HTTP 429, out of capacity). ``retry_after_s``: when to try it again."""

    def __init__(self, message: str, *, provider: str, retry_after_s: float | None = None,
                 code: str = "rate_limited") -> None:
        super().__init__(message, provider=provider, code=code)
        self.retry_after_s = retry_after_s


class KeyRejectedError(RetryableProviderError):
    """The key itself is refused (401, 403, no quota left): disable it until an operator re-enables it."""

    def __init__(self, message: str, *, provider: str, code: str = "key_rejected") -> None:
        super().__init__(message, provider=provider, code=code)


class PermanentProviderError(ProviderError, Permanent):
    """The same request will fail again: bad request (400), content policy, failed prediction."""

    def __init__(self, message: str, *, provider: str, code: str = "rejected") -> None:
        super().__init__(message, provider=provider, code=code)


class JobAlreadyFinished(PermanentProviderError):
    """The job has its terminal result already (a replay of a finished job): the call was cancelled."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message, provider=provider, code="job_finished")


@dataclass(frozen=True)
class ResumableCall:
    """What an adapter that can resume a paid call (``generate_resumable``) needs to know about it.

    ``seq`` is the job's current call to ``provider`` and ``call_id`` the provider's id of it when
    an earlier attempt created it; the adapter records a new id in ``calls`` before it waits on the
    call, and asks ``finished`` whether the job's result exists already (then it cancels the call).
    """

    job_id: str
    provider: str  # the candidate's name ("replicate"), as the calls are recorded under it
    seq: int
    call_id: str | None
    calls: ProviderCalls
    finished: Callable[[], Awaitable[bool]]


@runtime_checkable
class ImageProvider(Protocol):
    """Turns a spec into an image. Implementations raise only :class:`ProviderError`s."""

    name: str

    async def generate(self, spec: ImageSpec) -> GeneratedImage: ...
