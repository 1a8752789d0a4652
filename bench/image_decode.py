"""CPU to decode a ``generation.generated`` event: the image's base64 by binascii against pybase64.

Storage decodes one such event per job; its image travels as URL-safe base64 inside the JSON.
The baseline is the decoder the contract used before (binascii's strict mode, after mapping the
URL-safe alphabet to the standard one), run in the same process on the same events. Prints µs per
event for the whole contract decode and for the base64 step alone, and the ratio, medians of runs.

    python bench/image_decode.py --kb 40 --runs 5
"""

from __future__ import annotations

import argparse
import binascii
import json
import os
import statistics
import time
from collections.abc import Callable

from services.common import contracts as c
from services.common.contract_examples import EXAMPLES

_URL_SAFE_TO_STANDARD = str.maketrans("-_", "+/")


def binascii_strict(value: str) -> bytes:
    """The contract's decoder before pybase64."""
    return binascii.a2b_base64(value.translate(_URL_SAFE_TO_STANDARD), strict_mode=True)


def per_call_us(call: Callable[[], object], n: int) -> float:
    call()
    started = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - started) * 1e6 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=int, default=40, help="image size in KB (default 40, the bench's 256² PNG)")
    parser.add_argument("-n", type=int, default=500, help="decodes per measurement")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    event = EXAMPLES[c.GenerationGenerated].model_copy(update={"image": os.urandom(args.kb * 1024)})
    raw = event.to_json_bytes()
    encoded = json.loads(raw)["image"]  # the base64 text as it travels
    assert binascii_strict(encoded) == c.decode(c.GenerationGenerated, raw).image == event.image

    rows: dict[str, list[float]] = {"base64, binascii": [], "base64, contract": [], "event, contract": []}
    for run in range(args.runs):
        rows["base64, binascii"].append(per_call_us(lambda: binascii_strict(encoded), args.n))
        rows["base64, contract"].append(per_call_us(lambda: c.decode_base64(encoded), args.n))
        rows["event, contract"].append(per_call_us(lambda: c.decode(c.GenerationGenerated, raw), args.n))
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{name} {values[-1]:.1f} µs" for name, values in rows.items()))

    medians = {name: statistics.median(values) for name, values in rows.items()}
    print(f"\none {len(raw) / 1024:.0f} KB event ({args.kb} KB image), CPU µs, median of {args.runs}:")
    for name, value in medians.items():
        print(f"  {name:<18} {value:8.1f}")
    print(f"the contract's base64 step: {medians['base64, contract'] / medians['base64, binascii']:.3f} of binascii's; "
          f"the whole event decode costs {medians['event, contract']:.1f} µs against "
          f"{medians['event, contract'] - medians['base64, contract'] + medians['base64, binascii']:.1f} µs "
          "with binascii's step in its place")


if __name__ == "__main__":
    main()
