"""Job status and the terminal-once guard, against the real Redis."""

from __future__ import annotations

import pytest

from services.common import contracts as c
from services.common.jobs import RedisJobStore, RedisTerminalGuard
from services.common.redis import KeySpace

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(connections) -> KeySpace:
    return KeySpace(connections.redis.key_prefix)


def _completed(job_id: str, url: str) -> c.GenerationCompleted:
    return c.GenerationCompleted(
        job_id=job_id, tenant="t", url=url, object_key="k", sha256="b" * 64, content_type="image/png",
        size_bytes=3, spec=c.ImageSpec(prompt="p"), path="primary", provider="procedural", deterministic=True)


async def test_status_only_moves_forward_and_the_first_terminal_wins(redis, keys):
    jobs = RedisJobStore(redis, keys)
    job = c.new_job_id()

    assert await jobs.update(job, "queued", tenant="t")
    assert await jobs.update(job, "generating", provider="procedural")
    # Late: the status stays, missing facts are filled in, known ones are not overwritten.
    assert not await jobs.update(job, "routed", route="primary", provider="someone-else")
    assert (await jobs.get(job)).status == "generating"
    assert await jobs.update(job, "completed", url="http://x/1.png")
    assert not await jobs.update(job, "failed", error={"code": "late"})
    assert not await jobs.update(job, "stored", route_reason="too late for a terminal job")

    view = await jobs.get(job)
    assert (view.status, view.provider, view.url, view.route, view.error, view.route_reason) == (
        "completed", "procedural", "http://x/1.png", "primary", None, None)


async def test_changes_replay_every_accepted_step_in_order(redis, keys):
    jobs = RedisJobStore(redis, keys)
    job = c.new_job_id()
    for status in ("queued", "routed", "generating", "stored", "completed"):
        await jobs.update(job, status)
    await jobs.update(job, "routed")  # stale: no event

    changes = await jobs.changes(job, after="0", block_ms=100)

    assert [view.status for _, view in changes] == ["queued", "routed", "generating", "stored", "completed"]
    assert await jobs.changes(job, after=changes[-1][0], block_ms=100) == []


async def test_unknown_job_is_none(redis, keys):
    assert await RedisJobStore(redis, keys).get(c.new_job_id()) is None


async def test_terminal_guard_publishes_once_and_replays_the_stored_event(redis, keys):
    guard = RedisTerminalGuard(redis, keys)
    job = c.new_job_id()
    first, second = _completed(job, "http://x/first.png"), _completed(job, "http://x/second.png")

    assert await guard.claim(first) == first
    # A replay before the first was marked published gets the stored event, byte for byte.
    replayed = await guard.claim(second)
    assert replayed.to_json_bytes() == first.to_json_bytes()
    await guard.mark_published(job)
    assert await guard.claim(second) is None
