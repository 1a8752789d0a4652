"""The ``JobStore`` and ``TerminalGuard`` contracts: status only moves forward; one terminal event per job."""

from __future__ import annotations

import asyncio

import pytest

from services.common import contracts as c
from services.common.jobs import TerminalBeingPublished


def _completed(job_id: str, url: str) -> c.GenerationCompleted:
    return c.GenerationCompleted(
        job_id=job_id, tenant="t", url=url, object_key="k", sha256="b" * 64, content_type="image/png",
        size_bytes=3, spec=c.ImageSpec(prompt="p"), path="primary", provider="procedural", deterministic=True)


async def test_status_only_moves_forward_and_the_first_terminal_wins(impl):
    jobs = impl.job_store()
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


async def test_the_same_status_again_updates_fields_and_keeps_the_first_timestamp(impl):
    jobs = impl.job_store()
    job = c.new_job_id()
    assert await jobs.update(job, "generating", tenant="t")
    first = await jobs.get(job)
    assert await jobs.update(job, "generating", provider="hf-space-a", primary_depth=7, cached=False)

    view = await jobs.get(job)
    assert (view.status, view.tenant, view.provider, view.primary_depth, view.cached) == (
        "generating", "t", "hf-space-a", 7, False)
    assert view.created_at == first.created_at and view.updated_at >= first.updated_at
    # A field given as None is no change at all, not a deletion.
    assert await jobs.update(job, "generating", provider=None)
    assert (await jobs.get(job)).provider == "hf-space-a"


async def test_json_fields_read_back_as_values(impl):
    jobs = impl.job_store()
    job = c.new_job_id()
    await jobs.update(job, "failed", error={"code": "provider_rejected", "retryable": False},
                      timings={"accepted_at": "2025-01-01T00:00:00+00:00"}, deterministic=True)

    view = await jobs.get(job)
    assert view.error == {"code": "provider_rejected", "retryable": False}
    assert view.timings == {"accepted_at": "2025-01-01T00:00:00+00:00"}
    assert view.deterministic is True
    assert view.kind == "generation"


async def test_changes_replay_every_accepted_step_in_order(impl):
    jobs = impl.job_store()
    job = c.new_job_id()
    for status in ("queued", "routed", "generating", "stored", "completed"):
        await jobs.update(job, status)
    await jobs.update(job, "routed")  # stale: no event

    changes = await jobs.changes(job, after="0", block_ms=100)

    assert [view.status for _, view in changes] == ["queued", "routed", "generating", "stored", "completed"]
    assert await jobs.changes(job, after=changes[-1][0], block_ms=100) == []
    # From any id on: the steps after it, and only those.
    assert [view.status for _, view in await jobs.changes(job, after=changes[1][0], block_ms=100)] == [
        "generating", "stored", "completed"]


async def test_a_field_only_update_is_no_change_event(impl):
    jobs = impl.job_store()
    job = c.new_job_id()
    await jobs.update(job, "generating")
    await jobs.update(job, "generating", provider="procedural")

    changes = await jobs.changes(job, after="0", block_ms=100)
    assert [view.status for _, view in changes] == ["generating"]
    assert changes[0][1].provider is None  # the snapshot as it was at the change


async def test_a_waiting_reader_gets_the_next_change(impl):
    jobs = impl.job_store()
    job = c.new_job_id()
    await jobs.update(job, "queued")
    [(seen, _)] = await jobs.changes(job, after="0", block_ms=100)

    reader = asyncio.create_task(jobs.changes(job, after=seen, block_ms=1_500))
    await asyncio.sleep(0.05)
    assert not reader.done()
    await jobs.update(job, "routed", route="fallback")

    [(_, view)] = await asyncio.wait_for(reader, 1.0)
    assert (view.status, view.route) == ("routed", "fallback")


async def test_unknown_job_is_none(impl):
    jobs = impl.job_store()
    assert await jobs.get(c.new_job_id()) is None
    assert await jobs.changes(c.new_job_id(), after="0", block_ms=50) == []


async def test_terminal_guard_publishes_once_and_replays_the_stored_event(impl):
    guard = impl.terminal_guard()
    job = c.new_job_id()
    first, second = _completed(job, "http://x/first.png"), _completed(job, "http://x/second.png")

    assert await guard.claim(first) == first
    # A replay before the first was marked published gets the stored event, byte for byte.
    replayed = await guard.claim(second)
    assert replayed.to_json_bytes() == first.to_json_bytes()
    await guard.mark_published(job)
    assert await guard.claim(second) is None


async def test_terminal_guard_makes_a_concurrent_copy_wait_for_the_publisher(impl):
    """Two copies of one record at once: the second waits (Retryable) while the first holds the
    publishing lease, then gets nothing once it is published; no second publish."""
    guard = impl.terminal_guard()
    job = c.new_job_id()
    first = _completed(job, "http://x/first.png")
    assert await guard.claim(first) == first

    with pytest.raises(TerminalBeingPublished):
        await asyncio.create_task(guard.claim(_completed(job, "http://x/copy.png")))  # another task
    assert await guard.claim(first) == first  # the holder's own retry keeps its lease
    await guard.mark_published(job)
    assert await asyncio.create_task(guard.claim(_completed(job, "http://x/copy.png"))) is None


async def test_terminal_guard_keeps_the_claimed_events_type(impl):
    guard = impl.terminal_guard()
    job = c.new_job_id()
    failed = c.GenerationFailed(job_id=job, tenant="t", error=c.ErrorInfo(
        code="rejected", message="no", stage="generator", retryable=False))

    assert await guard.claim(failed) == failed
    replayed = await guard.claim(_completed(job, "http://x/late.png"))
    assert isinstance(replayed, c.GenerationFailed) and replayed == failed
    # Each job has its own claim.
    other = _completed(c.new_job_id(), "http://x/other.png")
    assert await guard.claim(other) == other


async def test_a_forwarded_mark_is_kept_per_job(impl):
    jobs = impl.job_store()
    job, other = c.new_job_id(), c.new_job_id()
    assert not await jobs.forwarded(job)
    await jobs.mark_forwarded(job)
    assert await jobs.forwarded(job) and not await jobs.forwarded(other)
