"""Small helpers several test modules share."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Generic, TypeVar

import httpx
import pytest
from pydantic_settings import BaseSettings

from services.common.kafka import make_consumer
from services.common.settings import env_names


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its exit status is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def allowed_env_names(classes: tuple[type[BaseSettings], ...]) -> set[str]:
    """Every variable ``classes`` read: what a process built on them may be given, nothing else."""
    return set().union(*(env_names(cls) for cls in classes))


def unknown_env_keys(env: Mapping[str, str], allowed: AbstractSet[str]) -> set[str]:
    """``FORGELINE_*`` keys of ``env`` no settings class reads: typos, stale names, another service's.

    Other variables (``PYTHONUNBUFFERED`` and the like) are not Forgeline's business.
    """
    return {key for key in env if key.startswith("FORGELINE_") and key not in allowed}


def load_settings(
    env: Mapping[str, str], classes: tuple[type[BaseSettings], ...], monkeypatch: pytest.MonkeyPatch
) -> dict[type[BaseSettings], BaseSettings]:
    """Instantiate ``classes`` from ``env`` alone, through pydantic-settings' real env parsing."""
    for key in list(os.environ):
        if key.startswith("FORGELINE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {cls: cls() for cls in classes}


async def records_for(connections, topic: str, key: str, settle_s: float = 2.0) -> list:
    """Every record on ``topic`` with Kafka key ``key``, read from the start until ``settle_s`` of quiet."""
    consumer = make_consumer(connections.kafka, topic, group_id=None)
    await consumer.start()
    found = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < settle_s:
            batch = await consumer.getmany(timeout_ms=300)
            records = [r for rs in batch.values() for r in rs]
            if records:
                quiet_since = time.monotonic()
            found += [r for r in records if r.key == key.encode()]
    finally:
        await consumer.stop()
    return found


T = TypeVar("T")


class ManualClock(Generic[T]):
    """A clock the test moves by setting ``now``; pass it where the code under test takes ``clock=``."""

    def __init__(self, now: T) -> None:
        self.now = now

    def __call__(self) -> T:
        return self.now


async def job_finished(http: httpx.AsyncClient, job_id: str, timeout_s: float = 120) -> dict:
    """The job's status view once it is completed or failed, polled through ingest."""
    deadline = time.monotonic() + timeout_s
    view: dict = {}
    while time.monotonic() < deadline:
        view = (await http.get(f"/v1/generations/{job_id}")).json()
        if view.get("status") in {"completed", "failed"}:
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s:g} s; its last status: {view}")
