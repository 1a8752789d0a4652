"""The hierarchy written out in ``services/common/errors.py`` is the one the classes have."""

from __future__ import annotations

import pytest

from services.common.blobstore import BlobStoreError
from services.common.contracts import ContractError
from services.common.errors import Permanent, PipelineError, Retryable
from services.common.images import ImageFetchUnavailable, ImageInputError, ImageRejected
from services.common.keypool import NoKeyAvailable
from services.ingest.errors import IdempotencyKeyReused, InvalidRequest, JobNotFound, PayloadTooLarge, Unavailable
from services.providers.failover import NoProviderAvailable
from services.providers.port import (
    KeyRejectedError,
    PermanentProviderError,
    ProviderError,
    RateLimitedError,
    RetryableProviderError,
)
from services.providers.verdict import VerdictError

RETRYABLE = [BlobStoreError, ImageFetchUnavailable, NoKeyAvailable, RetryableProviderError, RateLimitedError,
             KeyRejectedError, NoProviderAvailable, Unavailable]
PERMANENT = [ContractError, ImageRejected, PermanentProviderError, VerdictError, InvalidRequest,
             IdempotencyKeyReused, PayloadTooLarge, JobNotFound]


@pytest.mark.parametrize("cls", RETRYABLE, ids=lambda cls: cls.__name__)
def test_retryable_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, Retryable) and not issubclass(cls, Permanent)


@pytest.mark.parametrize("cls", PERMANENT, ids=lambda cls: cls.__name__)
def test_permanent_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, Permanent) and not issubclass(cls, Retryable)


@pytest.mark.parametrize("family, kinds", [
    (ProviderError, (RetryableProviderError, PermanentProviderError)),
    (ImageInputError, (ImageFetchUnavailable, ImageRejected)),
], ids=["provider", "image_input"])
def test_family_bases_are_split_by_their_subclasses(family: type[Exception], kinds: tuple[type, ...]) -> None:
    assert issubclass(family, PipelineError)
    assert not issubclass(family, Retryable | Permanent)
    assert all(issubclass(kind, family) for kind in kinds)


def test_the_docstring_names_every_class() -> None:
    from services.common import errors

    for cls in RETRYABLE + PERMANENT + [ProviderError, ImageInputError]:
        assert cls.__name__ in (errors.__doc__ or "")


def test_old_value_and_lookup_bases_still_catch() -> None:
    # Callers that caught the builtin bases before the hierarchy keep working.
    assert issubclass(ContractError, ValueError) and issubclass(ImageRejected, ValueError)
    assert issubclass(JobNotFound, LookupError)
