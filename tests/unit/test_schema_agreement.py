"""The published JSON Schemas and the consumers give the same verdict on the same message.

Each case is a change to a valid example; it goes through the consumers' real decode path
(``contracts.decode``) and through jsonschema on the schema ``forgeline schema`` writes, and both
must reach the expected verdict: a backend that validates against the schema is never surprised.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest

from services.common import contracts as c
from services.common.contract_examples import EXAMPLES
from services.common.topics import TOPIC_SPECS

VALID, INVALID = True, False


def _example(model: type[c.Event]) -> dict[str, Any]:
    return json.loads(EXAMPLES[model].to_json_bytes())


def _set(payload: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``payload`` with ``path`` (dotted) set to ``value``; ``...`` deletes it."""
    changed = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node = changed
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return changed


REQUESTED = c.GenerationRequested
STORED_REF = {"kind": "stored", "object_key": "inputs/a.png", "sha256": "a" * 64, "content_type": "image/png"}
CASES: list[tuple[str, type[c.Event], str, Any, bool]] = [
    ("the example", REQUESTED, "tenant", "studio-alpha", VALID),
    ("a cancel without a reason", c.GenerationCancelRequested, "reason", "", INVALID),
    ("seed as a string", REQUESTED, "spec.seed", "42", INVALID),
    ("seed as a whole float", REQUESTED, "spec.seed", 42.0, VALID),
    ("seed with a fraction", REQUESTED, "spec.seed", 42.5, INVALID),
    ("seed above 2^32-1", REQUESTED, "spec.seed", 2**32, INVALID),
    ("width as a whole float", REQUESTED, "spec.width", 256.0, VALID),
    ("width as a string", REQUESTED, "spec.width", "256", INVALID),
    ("width not a multiple of 8", REQUESTED, "spec.width", 260, INVALID),
    ("width as a boolean", REQUESTED, "spec.width", True, INVALID),
    ("created_at without a zone", REQUESTED, "created_at", "2025-01-31T12:00:00", INVALID),
    ("created_at with an offset", REQUESTED, "created_at", "2025-01-31T12:00:00+01:00", VALID),
    ("created_at with nanoseconds", REQUESTED, "created_at", "2025-01-31T12:00:00.123456789Z", VALID),
    ("created_at with a space for T", REQUESTED, "created_at", "2025-01-31 12:00:00Z", INVALID),
    ("created_at as Unix time in a string", REQUESTED, "created_at", "1738324800", INVALID),
    ("created_at as a number", REQUESTED, "created_at", 1738324800, INVALID),
    ("created_at on 30 February", REQUESTED, "created_at", "2025-02-30T12:00:00Z", INVALID),
    ("timings with a zone-less time", REQUESTED, "timings.accepted_at", "2025-01-31T12:00:00", INVALID),
    ("metadata with 32 entries", REQUESTED, "metadata", {f"k{i}": "v" for i in range(32)}, VALID),
    ("metadata with 33 entries", REQUESTED, "metadata", {f"k{i}": "v" for i in range(33)}, INVALID),
    ("metadata with an empty key", REQUESTED, "metadata", {"": "v"}, INVALID),
    ("metadata with a 65-character key", REQUESTED, "metadata", {"k" * 65: "v"}, INVALID),
    ("metadata with a 513-character value", REQUESTED, "metadata", {"k": "v" * 513}, INVALID),
    ("metadata with a number", REQUESTED, "metadata", {"k": 1}, INVALID),
    ("blank prompt", REQUESTED, "spec.prompt", "   ", INVALID),
    ("prompt of 2,000 characters with a space", REQUESTED, "spec.prompt", " " + "x" * 1999, VALID),
    ("prompt of 2,001 characters, 2,000 once stripped", REQUESTED, "spec.prompt", " " + "x" * 2000, INVALID),
    ("blank style", REQUESTED, "spec.style", " ", INVALID),
    ("blank negative prompt", REQUESTED, "spec.negative_prompt", " ", VALID),
    ("allow_placeholder as a string", REQUESTED, "allow_placeholder", "true", INVALID),
    ("allow_placeholder as 1", REQUESTED, "allow_placeholder", 1, INVALID),
    ("deadline_s as a string", REQUESTED, "deadline_s", "30", INVALID),
    ("deadline_s as an integer", REQUESTED, "deadline_s", 30, VALID),
    ("deadline_s over a day", REQUESTED, "deadline_s", 86_401, INVALID),
    ("reference_image over ftp", REQUESTED, "reference_image", "ftp://example.com/a.png", INVALID),
    ("reference_image over https", REQUESTED, "reference_image", "https://example.com/a.png", VALID),
    ("reference_image stored", REQUESTED, "reference_image", STORED_REF, VALID),
    ("reference_image stored without kind", REQUESTED, "reference_image", _set(STORED_REF, "kind", ...), INVALID),
    ("schema_version 2", REQUESTED, "schema_version", 2, INVALID),
    ("schema_version 1.0", REQUESTED, "schema_version", 1.0, VALID),
    ("an unknown priority", REQUESTED, "priority", "urgent", INVALID),
    ("an unknown field", REQUESTED, "added_later", {"anything": True}, VALID),
    ("an upper-case tenant", REQUESTED, "tenant", "Studio", INVALID),
    ("no job_id", REQUESTED, "job_id", ..., INVALID),
    ("a bad traceparent", REQUESTED, "trace.traceparent", "00-abc-01", INVALID),
    ("no created_at (it defaults)", REQUESTED, "created_at", ..., VALID),
    ("target image without kind", c.ComparisonRequested, "target_image.kind", ..., INVALID),
    ("target image of an unknown kind", c.ComparisonRequested, "target_image.kind", "ftp", INVALID),
    ("generated image by data URL", c.ComparisonRequested, "generated_image",
     {"kind": "data_url", "data_url": "data:image/png;base64,iVBORw0KGgo="}, VALID),
    ("a band that does not match the score", c.ComparisonCompleted, "result.band", "Excellent", INVALID),
    ("a band colour that does not match", c.ComparisonCompleted, "result.band_color", "#22c55e", INVALID),
    ("score 84.99 is Very Good", c.ComparisonCompleted, "result.score", 84.99, VALID),
    ("score 85 is not Very Good", c.ComparisonCompleted, "result.score", 85, INVALID),
    ("image in standard base64", c.GenerationGenerated, "image", "+/8=", VALID),
    ("image in URL-safe base64", c.GenerationGenerated, "image", "-_8=", VALID),
    ("image in unpadded base64", c.GenerationGenerated, "image", "-_8", INVALID),
    ("image with padding after a full group", c.GenerationGenerated, "image", "QUJD=", INVALID),
    ("image that is not base64", c.GenerationGenerated, "image", "not base64!", INVALID),
    ("attempts as a string", c.GenerationGenerated, "attempts", "2", INVALID),
    ("size_bytes as a whole float", c.GenerationCompleted, "size_bytes", 70.0, VALID),
    ("completed metadata with 33 entries", c.GenerationCompleted, "metadata", {f"k{i}": "v" for i in range(33)},
     INVALID),
    ("failed with retryable as a string", c.GenerationFailed, "error.retryable", "false", INVALID),
]


def _validator(model: type[c.Event]) -> jsonschema.Draft202012Validator:
    spec = next(spec for spec in TOPIC_SPECS if spec.model is model)
    schema = c.json_schema(model, title=spec.key)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _consumer_accepts(model: type[c.Event], payload: dict[str, Any]) -> bool:
    try:
        c.decode(model, json.dumps(payload).encode())
    except c.ContractError:
        return False
    return True


def test_the_format_checker_checks_date_times():
    """Without rfc3339-validator jsonschema silently skips ``format: date-time``, and 30 February passes."""
    assert "date-time" in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers, "pip install rfc3339-validator"


@pytest.mark.parametrize(("case", "model", "path", "value", "expected"), CASES, ids=[case[0] for case in CASES])
def test_schema_and_consumer_agree(case, model, path, value, expected):
    payload = _set(_example(model), path, value)

    schema_errors = [error.message for error in _validator(model).iter_errors(payload)]

    assert (not schema_errors, _consumer_accepts(model, payload)) == (expected, expected), schema_errors


def test_every_model_is_covered():
    assert {case[1] for case in CASES} | {c.GenerationRouted, c.ComparisonFailed} == set(c.EVENT_MODELS)


@pytest.mark.parametrize("model", c.EVENT_MODELS, ids=lambda m: m.__name__)
def test_every_example_is_valid_both_ways(model):
    payload = _example(model)

    assert list(_validator(model).iter_errors(payload)) == []
    assert c.decode(model, json.dumps(payload)) == EXAMPLES[model]
