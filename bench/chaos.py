"""Chaos on the real pipeline: N jobs over HTTP while services, the broker, Redis, S3 and providers fail.

Starts a private local stack (own state folder and free ports; it is stopped and removed at the
end), the fake providers and the six services, then sends N distinct jobs at ``--rate`` per
second, each retried on 5xx or a dropped connection with the same Idempotency-Key. Meanwhile it
injects each fault of ``--faults`` once at a seeded random moment: kill -9 of a service and its
restart, a broker SIGTERM or SIGKILL restart, a Redis restart, an S3 outage (SIGSTOP/SIGCONT), a
provider storm (30 % 429, 10 % 5xx, 5 % hangs). It waits (bounded) for every accepted job and
prints: accepted, terminal, LOST, duplicate terminal events (identical or not), HTTP status vs
Kafka, jobs paid twice, DLQ contents, orphan jobs, recovery time per fault, log sizes.

    python bench/chaos.py -n 600 --rate 30 --seed 1 --out chaos.json
    python bench/chaos.py -n 200 --rate 20 --faults kill:router,broker:sigkill --s3-outage 10 --storm 10

Exits 1 when a target is missed (0 lost, 0 differing duplicates, 0 paid twice, 0 orphans).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from services.devstack.chaos import CLUSTER_FAULTS, FAULT_NAMES, ChaosConfig, Timings, render, run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=600, help="jobs to send (default 600)")
    parser.add_argument("--rate", type=float, default=30.0, help="jobs per second (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="seeds fault times, storms and client jitter")
    parser.add_argument("--faults", default=None,
                        help=f"comma-separated, from: {', '.join((*FAULT_NAMES, *CLUSTER_FAULTS))} (default: all; "
                             "brokers:restart only with --brokers 3)")
    parser.add_argument("--brokers", type=int, choices=(1, 3), default=1,
                        help="3: a KRaft cluster (replication factor 3, min.insync.replicas 2); broker:* faults "
                             "then hit one broker of three, and brokers:restart restarts them all")
    parser.add_argument("--window", type=float, default=None,
                        help="faults fall within this many seconds of the start (default: n / rate)")
    parser.add_argument("--downtime", type=float, default=2.0, help="seconds between a kill and its restart")
    parser.add_argument("--s3-outage", type=float, default=30.0, help="seconds the S3 process is stopped")
    parser.add_argument("--storm", type=float, default=30.0, help="seconds the provider storm lasts")
    parser.add_argument("--drain", type=float, default=180.0, help="at most this long to wait for the last jobs")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args()

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # our own readers' reconnects while the broker is down
    config = ChaosConfig(
        n=args.n, rate=args.rate, seed=args.seed, brokers=args.brokers,
        faults=[f for f in args.faults.split(",") if f] if args.faults else None,
        timings=Timings(downtime_s=args.downtime, s3_outage_s=args.s3_outage, storm_s=args.storm),
        window_s=args.window, drain_s=args.drain, progress=lambda message: print(message, flush=True))
    try:
        report = asyncio.run(run_chaos(config))
    except ValueError as exc:  # an unknown fault name
        parser.error(str(exc))
    print("\n" + render(report))
    if args.out:
        args.out.write_text(json.dumps(report.as_json(), indent=2) + "\n")
        print(f"\nreport written to {args.out}")
    return 0 if all(report.targets_met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
