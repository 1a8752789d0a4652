"""CPU per upload of the dev stack's two S3 servers: S3Proxy (on disk, the default) against moto (in memory).

Starts both from the dev stack's components, each in a throwaway state folder on a free port,
then for each in turn: ``--warmup`` uploads (not counted: a JVM compiles its hot paths first),
then ``-n`` uploads of distinct 40 KB objects through boto3, one at a time, as the storage
service makes them. Prints the server process's CPU seconds per upload (user + system, read from
``/proc/<pid>/stat``, every thread included), the client's wall time per upload, the time each
took to start, and S3Proxy's figures as a ratio of moto's, measured in the same run.

    python bench/s3_servers.py -n 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.blobstore import IMMUTABLE_CACHE_CONTROL, make_s3_client
from services.devstack.process import free_ports
from services.devstack.s3 import S3Endpoint, s3_component, s3_settings
from services.devstack.settings import DevStackSettings

OBJECT_BYTES = 40 * 1024
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` (all its threads) so far."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat(5)


@dataclass(frozen=True)
class Figures:
    server: str
    start_s: float
    cpu_per_upload_s: float
    wall_p50_s: float
    wall_mean_s: float


def measure(server: S3Endpoint, *, uploads: int, warmup: int) -> Figures:
    began = time.perf_counter()
    server.start()
    start_s = time.perf_counter() - began
    pid = server.process.pid()
    assert pid is not None, f"{server.name} left no pid"
    client = make_s3_client(s3_settings(server.settings))
    bucket = server.settings.s3_bucket

    def put(key: str) -> float:
        body = os.urandom(OBJECT_BYTES)  # distinct bytes, like content-addressed images
        t = time.perf_counter()
        client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="image/png",
                          CacheControl=IMMUTABLE_CACHE_CONTROL)
        return time.perf_counter() - t

    try:
        for i in range(warmup):
            put(f"warmup/{i:06d}.png")
        cpu_before = cpu_seconds(pid)
        walls = [put(f"images/{i % 256:02x}/{i:06d}.png") for i in range(uploads)]
        cpu = cpu_seconds(pid) - cpu_before
    finally:
        client.close()
    return Figures(type(server).__name__.removesuffix("Component"), start_s, cpu / uploads,
                   statistics.median(walls), statistics.fmean(walls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--uploads", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="forgeline-bench-") as moto_state, \
            tempfile.TemporaryDirectory(prefix="forgeline-bench-") as proxy_state:
        moto_port, proxy_port = free_ports(2)
        servers = [
            s3_component(DevStackSettings(state_dir=Path(moto_state), s3_port=moto_port, s3_server="moto")),
            s3_component(DevStackSettings(state_dir=Path(proxy_state), s3_port=proxy_port, s3_server="s3proxy")),
        ]
        print(f"{args.uploads} uploads of {OBJECT_BYTES // 1024} KB per server after {args.warmup} warm-up uploads")
        figures: list[Figures] = []
        try:
            for server in servers:
                figures.append(measure(server, uploads=args.uploads, warmup=args.warmup))
                server.stop()
        finally:
            for server in servers:
                server.stop()
    print(f"{'server':10} {'start s':>8} {'CPU ms/upload':>14} {'wall ms p50':>12} {'wall ms mean':>13}")
    for f in figures:
        print(f"{f.server:10} {f.start_s:8.2f} {f.cpu_per_upload_s * 1000:14.3f} {f.wall_p50_s * 1000:12.2f} "
              f"{f.wall_mean_s * 1000:13.2f}")
    moto, proxy = figures
    print(f"S3Proxy / moto: CPU per upload {proxy.cpu_per_upload_s / moto.cpu_per_upload_s:.2f}x, "
          f"wall p50 {proxy.wall_p50_s / moto.wall_p50_s:.2f}x, start {proxy.start_s / moto.start_s:.2f}x")


if __name__ == "__main__":
    main()
