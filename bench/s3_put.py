"""CPU per upload: boto3's ``put_object`` against the signed single request (``services.common.s3put``).

Both upload distinct 40 KB objects to the running local stack's S3 endpoint (``forgeline dev up``;
``FORGELINE_S3_*`` from ``forgeline dev env``), from the same pool of threads, in turns, as
``S3BlobStore`` runs them; each run measures both. Prints this process's CPU and wall time per
upload for each, and the signed request's as a ratio of boto3's, medians over the runs; "digest" is
the signed request given the body's SHA-256, which storage computed to name the object.

    python bench/s3_put.py -n 600 --runs 3 --concurrency 16
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from services.common.blobstore import IMMUTABLE_CACHE_CONTROL, make_s3_client
from services.common.s3put import SignedPut
from services.common.settings import S3Settings

OBJECT_BYTES = 40 * 1024


def measure(upload: Callable[[str, bytes], object], prefix: str, n: int, concurrency: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per upload of ``n`` distinct objects, ``concurrency`` at a time."""
    bodies = [os.urandom(OBJECT_BYTES) for _ in range(n)]
    with ThreadPoolExecutor(concurrency) as threads:
        list(threads.map(lambda i: upload(f"{prefix}/warm/{i}.png", bodies[i]), range(concurrency)))  # connect first
        cpu, wall = time.process_time(), time.perf_counter()
        list(threads.map(lambda i: upload(f"{prefix}/{i:06d}.png", bodies[i]), range(n)))
        return (time.process_time() - cpu) * 1e6 / n, (time.perf_counter() - wall) * 1e6 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=600, help="uploads per client and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="uploads at once (the storage service's 16)")
    args = parser.parse_args()

    settings = S3Settings()
    boto = make_s3_client(settings)
    signed = SignedPut(settings)

    def with_boto3(key: str, body: bytes) -> None:
        boto.put_object(Bucket=settings.bucket, Key=key, Body=body, ContentType="image/png",
                        CacheControl=IMMUTABLE_CACHE_CONTROL)

    def with_signed(key: str, body: bytes) -> None:
        hashlib.sha256(body).hexdigest()  # storage names the object by its digest: hashed here as there
        signed.put(key, body, content_type="image/png", cache_control=IMMUTABLE_CACHE_CONTROL)

    def with_digest(key: str, body: bytes) -> None:
        """As storage uploads now: the digest it named the object by is signed, not computed again."""
        signed.put(key, body, content_type="image/png", cache_control=IMMUTABLE_CACHE_CONTROL,
                   sha256=hashlib.sha256(body).hexdigest())

    print(f"{args.n} uploads of {OBJECT_BYTES // 1024} KB per client and run, {args.concurrency} at a time, "
          f"to {settings.endpoint_url or 'AWS S3'} bucket {settings.bucket}")
    figures: dict[str, list[tuple[float, float]]] = {"boto3": [], "signed": [], "digest": []}
    prefix = f"bench-s3-put/{uuid.uuid4().hex[:8]}"
    for run in range(1, args.runs + 1):
        for name, upload in (("boto3", with_boto3), ("signed", with_signed), ("digest", with_digest)):
            cpu, wall = measure(upload, f"{prefix}/{run}/{name}", args.n, args.concurrency)
            figures[name].append((cpu, wall))
            print(f"  run {run} {name:7} CPU {cpu:7.0f} µs/upload, wall {wall:7.0f} µs/upload", flush=True)
    boto.close()

    cpu = {name: statistics.median(c for c, _ in runs) for name, runs in figures.items()}
    wall = {name: statistics.median(w for _, w in runs) for name, runs in figures.items()}
    print(f"\nmedian of {args.runs}   {'boto3':>10} {'signed':>10} {'ratio':>7} {'digest':>10} {'ratio':>7}"
          "   (signed and digest both hash the body once to name it, as storage does; digest signs that hash)")
    for label, figure in (("CPU µs/upload ", cpu), ("wall µs/upload", wall)):
        print(f"{label} {figure['boto3']:10.0f} {figure['signed']:10.0f} {figure['signed'] / figure['boto3']:7.2f} "
              f"{figure['digest']:10.0f} {figure['digest'] / figure['boto3']:7.2f}")


if __name__ == "__main__":
    main()
