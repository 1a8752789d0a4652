"""The durable record of paid spend, outside Redis: a lost budget ledger is rebuilt from it.

Redis holds the ledger's totals, and a Redis that restarts without its data (or a failover to a
replica that lagged) would forget what the month already spent: the next reservations would pass
the cap. So every reservation the ledger grants is also written here *before* the paid call is
made, and written again when it settles or is refunded. One object per reservation:

    <journal prefix><deployment>/<YYYY-MM>/<reservation id>.json
    {"reservation_id", "call", "month", "cost_micros", "state": "held"|"settled"|"refunded", "expires_ms",
     "tenant"}

A rebuild (``RedisBudgetLedger``, when the month's totals carry no ``journaled`` mark) lists the
month's objects and counts settled entries as spent and held ones as held again, so a call whose
outcome Redis forgot still counts against the cap. Writes are idempotent (the same key, the
latest state), and a write that fails before the call means the call is not made.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import asdict, dataclass
from typing import Literal

from botocore.exceptions import BotoCoreError, ClientError

from services.common.blobstore import make_s3_client
from services.common.errors import Retryable
from services.common.settings import S3Settings

__all__ = ["S3SpendJournal", "SpendEntry", "SpendJournalUnavailable", "journal_namespace"]

EntryState = Literal["held", "settled", "refunded"]


class SpendJournalUnavailable(Retryable):
    """The spend record could not be read or written: paid reservations are refused until it can."""


@dataclass(frozen=True)
class SpendEntry:
    """One reservation as the journal keeps it (costs in micro-dollars)."""

    reservation_id: str
    call: str  # what was reserved for: ``<job>:<provider>:<seq>``
    month: str
    cost_micros: int
    state: EntryState
    expires_ms: int
    tenant: str | None = None  # whose own budget it counts against too (entries written before tenants: None)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SpendEntry:
        data = json.loads(raw)
        return cls(reservation_id=str(data["reservation_id"]), call=str(data["call"]), month=str(data["month"]),
                   cost_micros=int(data["cost_micros"]), state=data["state"], expires_ms=int(data["expires_ms"]),
                   tenant=data.get("tenant"))


def journal_namespace(key_prefix: str) -> str:
    """The deployment's folder, from its Redis key prefix: one prefix, one ledger, one journal."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key_prefix).strip("_") or "default"


class S3SpendJournal:
    """``SpendJournal`` as one small object per reservation in an S3 bucket (keep it private)."""

    def __init__(self, settings: S3Settings, *, prefix: str, bucket: str | None = None, client=None,
                 concurrency: int = 16) -> None:
        self._bucket = bucket or settings.bucket
        self._prefix = prefix.rstrip("/") + "/"
        self._client = client if client is not None else make_s3_client(settings)
        self._concurrency = concurrency

    def __repr__(self) -> str:  # the client holds credentials
        return f"S3SpendJournal(bucket={self._bucket!r}, prefix={self._prefix!r})"

    def _key(self, month: str, reservation_id: str) -> str:
        return f"{self._prefix}{month}/{reservation_id}.json"

    async def write(self, entry: SpendEntry) -> None:
        try:
            await asyncio.to_thread(self._client.put_object, Bucket=self._bucket,
                                    Key=self._key(entry.month, entry.reservation_id), Body=entry.to_json(),
                                    ContentType="application/json")
        except (BotoCoreError, ClientError) as exc:
            raise SpendJournalUnavailable(f"cannot write spend entry {entry.reservation_id}: {exc}") from exc

    async def month(self, month: str) -> list[SpendEntry]:
        try:
            keys = await asyncio.to_thread(self._list, f"{self._prefix}{month}/")
            gate = asyncio.Semaphore(self._concurrency)

            async def read(key: str) -> SpendEntry:
                async with gate:
                    response = await asyncio.to_thread(self._client.get_object, Bucket=self._bucket, Key=key)
                    return SpendEntry.from_json(await asyncio.to_thread(response["Body"].read))

            return list(await asyncio.gather(*(read(key) for key in keys)))
        except (BotoCoreError, ClientError, ValueError, KeyError) as exc:
            raise SpendJournalUnavailable(f"cannot read the spend record of {month}: {exc}") from exc

    def _list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", ()))
        return keys
