"""Forgeline's one error story: every error we raise on purpose is either *retryable* or *permanent*.

The hierarchy, everywhere in ``services/`` (the module that defines each class on the right)::

    PipelineError                   base of the errors Forgeline's services raise on purpose
    ├── Retryable                   the same work may succeed if tried again
    │   ├── BlobStoreError          the object store refused or failed a request      common.blobstore
    │   ├── ImageFetchUnavailable   an image input cannot be fetched *now* (timeout,  common.images
    │   │                           5xx, DNS, the image store down)
    │   ├── NoKeyAvailable          every key of a provider is cooling or disabled    common.keypool
    │   ├── TerminalBeingPublished  another replica is publishing the job's result    common.jobs
    │   ├── RetryableProviderError  5xx, timeouts, connection errors, bad bodies      providers.port
    │   │   ├── RateLimitedError    429 / no capacity: cool the key                   providers.port
    │   │   ├── KeyRejectedError    401 / 403 / no quota: disable the key             providers.port
    │   │   └── NoProviderAvailable no provider can take the job now                  providers.failover
    │   └── Unavailable             ingest: a dependency did not answer (503)         ingest.errors
    └── Permanent                   the same work will fail again
        ├── ContractError           a message does not match its contract             common.contracts
        ├── ImageRejected           an image input that can never be used             common.images
        ├── PermanentProviderError  400, content policy, a failed prediction          providers.port
        │   └── VerdictError        the VLM answered, but not with a verdict          providers.verdict
        ├── InvalidRequest          ingest: the request breaks the contract (422)     ingest.errors
        │   └── IdempotencyKeyReused                                                  ingest.errors
        ├── PayloadTooLarge         ingest: an image over the size limit (413)        ingest.errors
        └── JobNotFound             ingest: no such job for this caller (404)         ingest.errors

Two families also have a base of their own that is neither, so callers can catch the family:
``ProviderError`` (``.provider``, ``.code``; ``RetryableProviderError`` and
``PermanentProviderError`` split it) and ``ImageInputError`` (``.field``, ``.code``, ``.status``;
``ImageFetchUnavailable`` and ``ImageRejected`` split it).

Whether an error is retryable is its class, never a flag: ask ``isinstance(exc, Retryable)``. Where
the answer goes on the wire (``ErrorInfo.retryable``) it is derived that way.

What does what with them:

- The consumer loop (:mod:`services.common.consumer`) dead-letters a :class:`Permanent` at once,
  waits out a :class:`Retryable` (or a third-party error that says a dependency is down,
  :mod:`services.common.outages`) for as long as it lasts, and retries an exception nobody
  classified (a bug or a surprise) with backoff, dead-lettering it after the last attempt.
- The provider failover loop (:mod:`services.providers.failover`) retries a
  ``RetryableProviderError`` within the job's attempts, another key or provider first, and fails
  the job at once on a ``PermanentProviderError``.

Third-party errors (redis, botocore, httpx) are translated where an adapter catches them, keeping
the original as the cause: ``raise BlobStoreError(msg) from exc``. One that is not translated
reaches the consumer loop unclassified, and is retried.
"""

from __future__ import annotations

__all__ = ["Permanent", "PipelineError", "Retryable"]


class PipelineError(Exception):
    """Base of the errors Forgeline's services raise on purpose; each one raised is also
    :class:`Retryable` or :class:`Permanent`. (``services.client.ForgelineError`` is the client's,
    for game backends: not part of this hierarchy.)"""


class Retryable(PipelineError):
    """The same work may succeed if tried again: a dependency failed, a limit will lift."""


class Permanent(PipelineError):
    """The same work will fail again: the input is wrong, or refused for good."""
