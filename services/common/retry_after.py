"""Reading an HTTP ``Retry-After`` value (RFC 9110 §10.2.3): the one parser every caller uses.

A provider adapter turns a 429's header into ``RateLimitedError.retry_after_s``; the key pool
cools the key that long. The value is delta-seconds (``"30"``, also ``"1.5"``) or an HTTP-date;
anything else (``"-5"``, ``"1e9"``, ``"inf"``, ``"soon"``) is None, so the caller's own default
applies instead of a wait nobody meant.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from datetime import UTC

__all__ = ["retry_after_seconds"]

_DELTA_SECONDS = re.compile(r"\d+(\.\d+)?")


def retry_after_seconds(header: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date); None when absent or unusable.

    A date already past means "now" (0.0). ``now`` (epoch seconds) defaults to the wall clock.
    """
    if header is None:
        return None
    text = header.strip()
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
