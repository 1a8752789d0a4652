"""The chaos suite: the real pipeline on a private local stack, broken on purpose while jobs flow.

``run_chaos(ChaosConfig(...))`` starts its own Kafka, Redis, S3, fake providers and the six
services, sends N jobs over HTTP (``load``), injects every fault of ``faults.FAULT_NAMES`` at a
seeded moment and repairs it, waits for the jobs, and audits Kafka, ingest's API, the providers'
charges and the spend journal (``audit``) into a ``ChaosReport`` (``report.render`` prints it).
``bench/chaos.py`` is its command line; ``tests/e2e/test_chaos.py`` holds a short run to the targets.
"""

from __future__ import annotations

from services.devstack.chaos.faults import CLUSTER_FAULTS, FAULT_NAMES, Timings
from services.devstack.chaos.report import ChaosReport, render
from services.devstack.chaos.run import ChaosConfig, run_chaos

__all__ = ["CLUSTER_FAULTS", "FAULT_NAMES", "ChaosConfig", "ChaosReport", "Timings", "render", "run_chaos"]
