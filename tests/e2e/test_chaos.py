"""The chaos suite, short: a few hundred jobs while every fault strikes once, held to the targets.

The run owns a private stack (its own broker, Redis and S3 on free ports), since it kills them:
the session's shared services are not used. Timings are compressed (short outages and storms) so
it ends within a few minutes; ``bench/chaos.py`` runs the long version and prints the same table.
"""

from __future__ import annotations

import logging

import pytest

from services.devstack.chaos import FAULT_NAMES, ChaosConfig, Timings, render, run_chaos

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


async def test_every_fault_once_loses_nothing_duplicates_nothing_and_pays_once() -> None:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the auditor's own reconnects during broker faults
    config = ChaosConfig(
        n=300, rate=10, seed=10, faults=list(FAULT_NAMES), window_s=30, drain_s=90, give_up_s=90,
        timings=Timings(downtime_s=1.0, s3_outage_s=8.0, storm_s=8.0, provider_hang_s=3.0),
        progress=lambda message: print(message, flush=True))

    report = await run_chaos(config)
    print("\n" + render(report))

    assert report.requests == 300 and report.accepted + sum(report.not_accepted.values()) == 300
    assert sorted(f["name"] for f in report.faults) == sorted(FAULT_NAMES)
    assert all(f["repaired_s"] is not None for f in report.faults), "a fault was never repaired"
    assert report.jobs > 0 and report.terminal > 0, "nothing went through the pipeline at all"
    assert report.lost == [], f"{len(report.lost)} accepted jobs never reached a terminal event"
    assert report.duplicates_different == [], "a job got two terminal events with different bytes"
    assert report.paid["jobs_paid_twice"] == [], "a provider was paid twice for one request"
    assert report.orphans == [], "one client request made two jobs"
    assert report.not_accepted == {}, "the client gave up on requests that ingest never accepted"
