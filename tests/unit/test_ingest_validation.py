"""The 422 body ingest sends: short, encodable excerpts; a regex that says what Redis takes as a stream id."""

from __future__ import annotations

import json
import re

import pytest

from services.ingest.validation import EXCERPT_CHARS, STREAM_ID_PATTERN, decimal_at_most, excerpt, problems


@pytest.mark.parametrize(("value", "shown"), [
    (float("nan"), "NaN"),
    (float("inf"), "Infinity"),
    (float("-inf"), "-Infinity"),
    ("sword \ud800 x", "sword \\ud800 x"),
    ("line\nbreak\x00", "line\\nbreak\\x00"),
    ("x" * 10_000, "x" * EXCERPT_CHARS + "…"),
    ("\U00044932" * 100, ("\\U00044932" * 4)[:EXCERPT_CHARS] + "…"),  # escapes count against the limit
    (10**400, "1" + "0" * (EXCERPT_CHARS - 1) + "…"),
    (True, "true"),
    (None, "null"),
    ({"a": "b"}, None),
    ([1, 2], None),
])
def test_an_excerpt_is_short_and_always_encodes(value, shown):
    assert excerpt(value) == shown
    json.dumps(shown, allow_nan=False).encode("utf-8")


def test_problems_cut_every_part_and_never_carry_the_whole_input():
    hostile = {"type": "string_too_long", "loc": ("body", "metadata", "k\ud800" * 1000),
               "msg": "m" * 10_000, "input": "i" * 10_000_000, "ctx": {"max_length": 2000, "error": ValueError("v")}}

    [problem] = problems([hostile])

    assert len(json.dumps(problem)) < 1_000
    assert problem["loc"][:2] == ["body", "metadata"] and problem["loc"][2].startswith("k\\ud800")
    assert problem["ctx"] == {"max_length": "2000", "error": "v"}
    assert problem["input"] == "i" * EXCERPT_CHARS + "…"


def test_problems_list_at_most_twenty_and_say_so():
    listed = problems([{"type": "missing", "loc": ("body", str(i)), "msg": "Field required"} for i in range(500)])

    assert len(listed) == 21
    assert listed[-1]["type"] == "too_many_errors"


@pytest.mark.parametrize("limit", [0, 7, 10, 99, 100, 509, 1000, 2**32 - 1, 2**64 - 1])
def test_decimal_at_most_matches_exactly_the_numbers_up_to_its_limit(limit):
    matches = re.compile(f"^{decimal_at_most(limit)}$").match
    probes = {0, 1, 9, 10, limit - 1, limit, limit + 1, limit * 10, 10 ** len(str(limit))} - {-1}
    for number in probes:
        assert bool(matches(str(number))) == (number <= limit), number
    assert not matches("0" + str(limit))  # no leading zeros: ids the server never sent


def test_stream_ids_up_to_redis_limits_match_and_beyond_do_not():
    matches = re.compile(STREAM_ID_PATTERN).match
    assert all(matches(good) for good in ("0", "0-0", "1700000000000-3", f"{2**64 - 1}-{2**64 - 1}"))
    assert not any(matches(bad) for bad in (str(2**64), f"1-{2**64}", "-1", "1-", "1-2-3", "x", ""))
