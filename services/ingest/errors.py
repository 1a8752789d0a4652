"""What the ingest handlers raise; ``services.ingest.app`` maps each to an HTTP status.

Each is :class:`~services.common.errors.Permanent` (the same request fails again: 4xx) or
:class:`~services.common.errors.Retryable` (a dependency did not answer: 503).
"""

from __future__ import annotations

from typing import Any

from services.common.errors import Permanent, Retryable


class InvalidRequest(Permanent):
    """The request breaks the contract (422); ``errors`` are in FastAPI's 422 shape."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


class IdempotencyKeyReused(InvalidRequest):
    """The Idempotency-Key was used before with a different body (what Stripe answers with a 422)."""

    def __init__(self) -> None:
        super().__init__([{
            "type": "idempotency_key_reused",
            "loc": ["header", "Idempotency-Key"],
            "msg": "this Idempotency-Key was already used with a different request body; "
                   "use a new key for a new request, or resend the original body to get its job",
        }])


class PayloadTooLarge(Permanent):
    """One image in the request is over the size limit (413); the message names the field and the limit."""


class JobNotFound(Permanent, LookupError):
    """No such job for this caller (404)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class Unavailable(Retryable):
    """A dependency did not answer (503); the same request may succeed later."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(message)
        self.dependency = dependency


def describe(result: str | BaseException, *, detail: bool = True) -> str:
    """A probe's result or a failure, short enough for a response: the type alone when ``detail`` is off."""
    if isinstance(result, TimeoutError):
        return "no answer in time"
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {str(result)[:200]}" if detail else type(result).__name__
    return result
