from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import ValidationError

from services.common import contracts as c
from services.common.topics import TOPIC_SPECS

JOB = "0123456789abcdef0123456789abcdef"
SPEC = c.ImageSpec(prompt="frost crystal longbow", negative_prompt="blurry", width=256, height=512, seed=42)
DECISION = c.RouteDecision(path="fallback", reason="primary depth 61 >= 50", primary_depth=61, threshold=50)
RESULT = c.ComparisonResult(score=72.5, band="Very Good", band_color="#65a30d", differences=["darker"],
                            improvements=["add 'bright'"], method="perceptual", response_time_ms=12.0)

EXAMPLES: dict[type[c.Event], c.Event] = {
    c.GenerationRequested: c.GenerationRequested(
        job_id=JOB, tenant="studio-a", spec=SPEC, priority="high", deadline_s=30,
        reference_image="https://example.com/target.png", metadata={"item": "bow-17"}, idempotency_key="k-1"),
    c.GenerationCancelRequested: c.GenerationCancelRequested(job_id=JOB, tenant="studio-a", reason="player left"),
    c.GenerationRouted: c.GenerationRouted(job_id=JOB, tenant="studio-a", spec=SPEC, decision=DECISION),
    c.GenerationGenerated: c.GenerationGenerated(
        job_id=JOB, tenant="studio-a", spec=SPEC, decision=DECISION, image=b"\x89PNG\r\n\x1a\n\x00\xff",
        content_type="image/png", provider="procedural", deterministic=True),
    c.GenerationCompleted: c.GenerationCompleted(
        job_id=JOB, tenant="studio-a", url="http://127.0.0.1:19000/b/images/x.png", object_key="images/x.png",
        sha256="a" * 64, content_type="image/png", size_bytes=10, spec=SPEC, path="primary",
        provider="procedural", deterministic=True, comparison=RESULT),
    c.GenerationFailed: c.GenerationFailed(
        job_id=JOB, tenant="studio-a",
        error=c.ErrorInfo(code="provider_rejected", message="content policy", stage="generator", retryable=False)),
    c.ComparisonRequested: c.ComparisonRequested(
        job_id=JOB, tenant="studio-a", target_image=c.HttpsImage(url="https://example.com/t.png"),
        generated_image=c.JobImage(job_id="fedcba9876543210"), original_prompt="a bow"),
    c.ComparisonCompleted: c.ComparisonCompleted(job_id=JOB, tenant="studio-a", result=RESULT),
    c.ComparisonFailed: c.ComparisonFailed(
        job_id=JOB, tenant="studio-a",
        error=c.ErrorInfo(code="image_unreadable", message="not an image", stage="comparer", retryable=False)),
}


def test_every_event_model_has_an_example():
    assert set(EXAMPLES) == set(c.EVENT_MODELS)


@pytest.mark.parametrize("model", c.EVENT_MODELS, ids=lambda m: m.__name__)
def test_round_trip_through_json_bytes(model):
    event = EXAMPLES[model]

    decoded = c.decode(model, event.to_json_bytes())

    assert decoded == event
    assert decoded.schema_version == 1
    assert decoded.created_at.tzinfo is not None


@pytest.mark.parametrize("spec", TOPIC_SPECS, ids=lambda s: s.key)
def test_published_json_schema_accepts_the_example_and_refuses_a_broken_one(spec):
    schema = c.json_schema(spec.model, title=spec.key)
    example = json.loads(EXAMPLES[spec.model].to_json_bytes())

    jsonschema.validate(example, schema)
    broken = dict(example, job_id="no spaces allowed")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_image_bytes_travel_as_base64():
    event = EXAMPLES[c.GenerationGenerated]

    payload = json.loads(event.to_json_bytes())

    assert isinstance(payload["image"], str)
    assert c.decode(c.GenerationGenerated, json.dumps(payload)).image == b"\x89PNG\r\n\x1a\n\x00\xff"


@pytest.mark.parametrize(("image", "reason"), [
    ("-_8", "Incorrect padding"),
    ("-_8=\n", "Excess data after padding"),
    ("-_8!", "Only base64 data is allowed"),
    ("QUJD=", "an '=' after a complete group of four"),
    ("QUJD=QUJD", "Discontinuous padding not allowed"),
])
def test_an_image_that_is_not_padded_base64_is_refused_with_the_reason(image: str, reason: str):
    payload = json.loads(EXAMPLES[c.GenerationGenerated].to_json_bytes()) | {"image": image}

    with pytest.raises(c.ContractError) as caught:
        c.decode(c.GenerationGenerated, json.dumps(payload))

    assert caught.value.problems["image"].endswith(f"must be padded base64: {reason}")


def test_invalid_payload_names_every_bad_field():
    payload = json.loads(EXAMPLES[c.GenerationRequested].to_json_bytes())
    payload["tenant"] = "Not A Tenant"
    payload["spec"]["width"] = 100  # not a multiple of 8
    payload["spec"]["prompt"] = ""
    payload["priority"] = "urgent"

    with pytest.raises(c.ContractError) as caught:
        c.decode(c.GenerationRequested, json.dumps(payload))

    assert set(caught.value.problems) == {"tenant", "spec.width", "spec.prompt", "priority"}
    assert "multiple of 8" in caught.value.problems["spec.width"]
    assert "GenerationRequested" in str(caught.value)


@pytest.mark.parametrize(
    "raw",
    [b"not json at all", b"[1, 2, 3]", b"{}", b'{"schema_version": 2, "job_id": "0123456789", "tenant": "a"}'],
)
def test_garbage_is_a_contract_error_not_a_crash(raw):
    with pytest.raises(c.ContractError):
        c.decode(c.GenerationRequested, raw)


@pytest.mark.parametrize("raw", [
    b'{"job_id": "0123456789", "tenant": "a", "spec": {"prompt": "sword \\ud800 x"}}',  # a lone surrogate
    b'{"job_id": "0123456789", "tenant": "a", "spec": {"prompt": "sword \xed\xa0\x80 x"}}',  # CESU bytes
    b'{"job_id": "0123456789", "tenant": "a", "spec": {"prompt": "axe"}, "deadline_s": NaN}',
    b'{"job_id": "0123456789", "tenant": "a", "spec": {"prompt": "axe"}, "deadline_s": Infinity}',
    b'{"job_id": "0123456789", "tenant": "a", "spec": {"prompt": "axe"}, "metadata": {"' + b"k" * 1_000_000 + b'": 1}}',
    b'{"job_id": "0123456789", "tenant": "a", "spec": {"prompt": "' + b"x" * 5_000_000 + b'"}}',
    b'{"job_id": "0123456789", "tenant": "a", "spec": {"prompt": "axe"}, "metadata": {'
    + b", ".join(b'"%d\\u0000%s": %d' % (i, b"k" * 200, i) for i in range(1000)) + b"}}",
])
def test_a_hostile_record_is_a_short_printable_contract_error(raw):
    """Its message becomes a dead letter's reason header and a log line: short and encodable, whatever came in."""
    with pytest.raises(c.ContractError) as caught:
        c.decode(c.GenerationRequested, raw)

    reason = str(caught.value)
    assert len(reason) < 3_000
    assert reason.isprintable()
    reason.encode("utf-8")  # no lone surrogate survives


def test_a_python_producer_cannot_send_a_metadata_key_that_is_not_unicode():
    with pytest.raises(ValidationError, match="not valid Unicode"):
        c.GenerationRequested(job_id=JOB, tenant="a", spec=SPEC, metadata={"item\udfff": "1"})


def test_tombstone_is_a_contract_error():
    with pytest.raises(c.ContractError, match="empty value"):
        c.decode(c.GenerationRequested, None)


def test_consumers_ignore_unknown_fields():
    payload = json.loads(EXAMPLES[c.GenerationRequested].to_json_bytes())
    payload["added_in_a_later_minor_version"] = {"anything": True}

    assert c.decode(c.GenerationRequested, json.dumps(payload)) == EXAMPLES[c.GenerationRequested]


def test_events_are_frozen():
    with pytest.raises(ValidationError):
        EXAMPLES[c.GenerationRequested].tenant = "someone-else"  # type: ignore[misc]


def test_reference_image_must_be_data_or_https():
    with pytest.raises(ValidationError, match="reference_image"):
        c.GenerationRequested(job_id=JOB, tenant="t", spec=SPEC, reference_image="file:///etc/passwd")


def test_cache_key_ignores_whitespace_runs_but_not_content():
    a = c.ImageSpec(prompt="flaming   obsidian\ngreatsword", seed=1)
    b = c.ImageSpec(prompt="flaming obsidian greatsword", seed=1)
    other_seed = c.ImageSpec(prompt="flaming obsidian greatsword", seed=2)
    other_size = c.ImageSpec(prompt="flaming obsidian greatsword", seed=1, width=1024)

    assert a.cache_key() == b.cache_key()
    assert len({b.cache_key(), other_seed.cache_key(), other_size.cache_key()}) == 3


@pytest.mark.parametrize(
    ("score", "band", "colour"),
    [(100, "Excellent", "#22c55e"), (85, "Excellent", "#22c55e"), (84.9, "Very Good", "#65a30d"),
     (55, "Good", "#84cc16"), (40, "Fair", "#ca8a04"), (25, "Poor", "#ea580c"), (24.99, "Very Poor", "#dc2626"),
     (0, "Very Poor", "#dc2626")],
)
def test_quality_bands_follow_seed_000(score, band, colour):
    assert c.quality_band(score) == (band, colour)


def test_comparison_result_band_must_match_its_score():
    with pytest.raises(ValidationError, match="does not match score"):
        c.ComparisonResult(score=90, band="Poor", band_color="#ea580c", method="vlm", response_time_ms=1)


def test_trace_child_keeps_the_trace_id_and_makes_a_new_span():
    parent = c.TraceContext.new()

    child = parent.child()

    assert child.traceparent.split("-")[1] == parent.traceparent.split("-")[1]
    assert child.traceparent.split("-")[2] != parent.traceparent.split("-")[2]
