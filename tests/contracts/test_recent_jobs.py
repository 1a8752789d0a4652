"""The ``RecentJobs`` contract: the latest completed job ids, newest first, capped, each once."""

from __future__ import annotations


async def test_newest_first_and_capped(impl):
    recent = impl.recent_jobs(capacity=3)
    assert await recent.latest(10) == []

    for job_id in ("job-a", "job-b", "job-c", "job-d"):
        await recent.add(job_id)

    assert await recent.latest(10) == ["job-d", "job-c", "job-b"]
    assert await recent.latest(2) == ["job-d", "job-c"]
    assert await recent.latest(0) == []


async def test_a_replayed_completion_moves_to_the_front_once(impl):
    recent = impl.recent_jobs(capacity=5)
    for job_id in ("job-a", "job-b", "job-a"):
        await recent.add(job_id)

    assert await recent.latest(5) == ["job-a", "job-b"]
