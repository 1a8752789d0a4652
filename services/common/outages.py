"""Which errors mean "a dependency is down for now": wait it out, never dead-letter the work.

A record that fails because Redis is restarting, the broker is electing a leader or S3 is slow
is not a poison message: the same record succeeds once the dependency is back. The consumer loop
(:mod:`services.common.consumer`) retries such a failure for as long as it lasts and reports the
service not ready meanwhile; start-up (:mod:`services.common.bootstrap`) waits for the same errors.

What counts, and why:

    redis ConnectionError (incl. BusyLoadingError: LOADING),   the server is restarting, loading its AOF,
    TimeoutError, ClusterDownError, TryAgainError,             failing over, or the connection was reset
    ReadOnlyError
    aiokafka KafkaConnectionError, KafkaTimeoutError,          the broker is unreachable, restarting, or
    any KafkaError marked ``retriable``                         moving a leader or a coordinator
    OutOfOrderSequenceNumber, ProducerFenced                    the producer died with the cluster's restart;
                                                                the next send renews it (common.kafka)
    BlobStoreError                                              S3 refused or failed a request (5xx, slow)
    OSError, TimeoutError                                       a socket failed underneath a client
"""

from __future__ import annotations

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
)
from redis import exceptions as redis_errors

from services.common.blobstore import BlobStoreError

__all__ = ["describe_outage", "is_outage"]

_REDIS_OUTAGES: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # BusyLoadingError is one
    redis_errors.TimeoutError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,
)


def _dependency(exc: BaseException) -> str | None:
    if isinstance(exc, _REDIS_OUTAGES):
        return "redis"
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError, OutOfOrderSequenceNumber, ProducerFenced)):
        return "kafka"
    if isinstance(exc, KafkaError) and getattr(exc, "retriable", False):
        return "kafka"
    if isinstance(exc, BlobStoreError):
        return "s3"
    if isinstance(exc, (OSError, TimeoutError)):
        return "network"
    return None


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) says a dependency is down for now."""
    return describe_outage(exc) is not None


def describe_outage(exc: BaseException) -> str | None:
    """The dependency that is down (``"redis"``, ``"kafka"``, ``"s3"``, ``"network"``), or None.

    Follows ``__cause__``, so an adapter's translated error (``raise X from ConnectionError``) counts.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _dependency(current)
        if found is not None:
            return found
        current = current.__cause__
    return None
