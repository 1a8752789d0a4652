"""One example of every event, as the published documents show them (``forgeline schema``).

Fixed ids, times and trace context, so the generated documents only change when a contract does.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from services.common import contracts as c

JOB_ID = "7f3c2a9e5b1d4c6fa0e8b2d4c6f8a0e2"
TENANT = "studio-alpha"
_AT = datetime(2025, 1, 31, 12, 0, 0, tzinfo=UTC)
_TRACE = c.TraceContext(traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
_ENVELOPE = {"job_id": JOB_ID, "tenant": TENANT, "created_at": _AT, "trace": _TRACE}

_SPEC = c.ImageSpec(prompt="flaming obsidian greatsword", negative_prompt="blurry, text, watermark",
                    width=512, height=512, seed=42, style="painterly")
_JOB = {"spec": _SPEC, "priority": "standard", "deadline_s": 30.0, "metadata": {"item_id": "sword-017"},
        "timings": c.StageTimes(accepted_at=_AT)}
_DECISION = c.RouteDecision(path="primary", reason="primary depth 12 < 50", primary_depth=12, threshold=50,
                            decided_at=_AT, estimated_wait_s=4.0, service_rate=3.0, deadline_s=30.0,
                            priority="standard")
_ROUTED_TIMINGS = c.StageTimes(accepted_at=_AT, routed_at=_AT)
_PNG = bytes.fromhex(  # a 1×1 transparent PNG
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c63606060600000"
    "00050001a5f645400000000049454e44ae426082")
_SHA = hashlib.sha256(_PNG).hexdigest()
_RESULT = c.ComparisonResult(score=78.4, band="Very Good", band_color="#65a30d",
                             differences=["the generated image is darker"], improvements=["add 'bright, well lit'"],
                             method="perceptual", response_time_ms=42.0)
_ERROR = c.ErrorInfo(code="provider_rejected", message="the provider refused the prompt (content policy)",
                     stage="generator", retryable=False, provider="replicate")
_COMPLETED = c.GenerationCompleted(
    **_ENVELOPE, url=f"https://cdn.example.com/images/{_SHA}.png", object_key=f"images/{_SHA}.png", sha256=_SHA,
    content_type="image/png", size_bytes=len(_PNG), spec=_SPEC, path="primary", provider="hf-space-a",
    deterministic=False, metadata={"item_id": "sword-017"},
    timings=c.StageTimes(accepted_at=_AT, routed_at=_AT, generated_at=_AT, stored_at=_AT, completed_at=_AT))

EXAMPLES: dict[type[c.Event], c.Event] = {
    c.GenerationRequested: c.GenerationRequested(**_ENVELOPE, **_JOB, idempotency_key="sword-017"),
    c.GenerationCancelRequested: c.GenerationCancelRequested(**_ENVELOPE, reason="the player left the shop"),
    c.GenerationRouted: c.GenerationRouted(**_ENVELOPE, **(_JOB | {"timings": _ROUTED_TIMINGS}), decision=_DECISION),
    c.GenerationGenerated: c.GenerationGenerated(
        **_ENVELOPE, **(_JOB | {"timings": _ROUTED_TIMINGS}), decision=_DECISION, image=_PNG, content_type="image/png",
        provider="hf-space-a", model="black-forest-labs/FLUX.1-schnell", deterministic=False),
    c.GenerationCompleted: _COMPLETED,
    c.GenerationFailed: c.GenerationFailed(**_ENVELOPE, error=_ERROR, metadata={"item_id": "sword-017"}),
    c.ComparisonRequested: c.ComparisonRequested(
        **_ENVELOPE, target_image=c.HttpsImage(url="https://assets.example.com/concept/greatsword.png"),
        generated_image=c.JobImage(job_id="0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
        original_prompt="flaming obsidian greatsword"),
    c.ComparisonCompleted: c.ComparisonCompleted(**_ENVELOPE, result=_RESULT),
    c.ComparisonFailed: c.ComparisonFailed(
        **_ENVELOPE, error=c.ErrorInfo(code="image_unreadable", message="target_image: not a PNG, JPEG or WebP image",
                                       stage="comparer", retryable=False)),
}
