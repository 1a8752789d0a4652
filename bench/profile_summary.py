"""Where each service's CPU went: py-spy's collapsed stacks (``bench/e2e.py --profile DIR``) by stage.

A sample counts for the innermost frame that belongs to a known part (Kafka client, Redis client,
S3 client, HTTP server, contracts and JSON, logging and metrics, the handler's own code); waiting
(``select``, a lock, a thread pool's queue) is left out. Prints each service's share per part.

    python bench/profile_summary.py /tmp/profiles
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

#: (part, what a frame's file path contains), innermost match wins; the first listed wins a tie.
PARTS = (
    ("kafka client", ("aiokafka/", "kafka/")),
    ("redis client", ("redis/",)),
    ("s3 client", ("botocore/", "boto3/", "urllib3/", "http/client.py", "s3transfer/")),
    ("http server", ("uvicorn/", "starlette/", "fastapi/", "httptools", "h11/", "anyio/")),
    ("http client", ("httpx/", "httpcore/")),
    ("contracts, json", ("pydantic/", "pydantic_core", "json/", "services/common/contracts.py")),
    ("logging, metrics", ("logging/", "prometheus_client/")),
    ("images", ("PIL/", "services/providers/procedural", "services/providers/instant")),
    ("forgeline code", ("services/",)),
)
#: Innermost functions that mean the thread was waiting (the event loop's ``EpollSelector.select``, a
#: thread pool's idle worker, an S3 thread blocked reading its answer…), by their qualified name or its
#: last part: py-spy samples them as running.
WAITING = frozenset(("select", "Condition.wait", "Queue.get", "wait_for_read", "poll_wait_for_socket", "_worker",
                     "sleep", "SocketIO.readinto",
                     "poll_wait_for_socket.<locals>.do_poll",  # urllib3 polling for the S3 server's answer
                     "QueueListener.dequeue"))  # the log writer's thread, blocked in SimpleQueue.get (C)


def is_waiting(frame: str) -> bool:
    qualified = frame.partition(" (")[0]
    return qualified in WAITING or qualified.rpartition(".")[2] in WAITING


def part_of(frames: list[str]) -> str | None:
    """The part a sample's CPU is spent in, or None when the sample is a wait.

    The event loop's ``select`` calls no Python code: a stack with frames under it is a torn sample
    (py-spy's ``--nonblocking`` reads a running process), taken while the loop waited.
    """
    if is_waiting(frames[-1]) or any(frame.startswith("EpollSelector.select (") for frame in frames):
        return None
    for frame in reversed(frames):
        location = frame.rpartition(" (")[2]
        for part, markers in PARTS:
            if any(marker in location for marker in markers):
                return part
    return "asyncio, other"


def summarise(path: Path) -> tuple[int, collections.Counter[str]]:
    busy: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        part = part_of(stack.split(";"))
        if part is not None:
            busy[part] += int(count)
            total += int(count)
    return total, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the --profile folder of bench/e2e.py")
    args = parser.parse_args()
    names = [part for part, _ in PARTS] + ["asyncio, other"]
    print(f"{'service':20}" + "".join(f"{name[:14]:>15}" for name in names))
    for path in sorted(args.folder.glob("*.txt")):
        total, busy = summarise(path)
        print(f"{path.stem:20}" + "".join(f"{100 * busy[name] / max(1, total):14.0f}%" for name in names))


if __name__ == "__main__":
    main()
