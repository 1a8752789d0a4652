"""schemathesis hooks for tests/e2e/test_schemathesis.py: what a schema cannot say, positive cases get right.

A schema can say a field is a ``data:image/…`` URL but not that its bytes are a PNG, nor that a
job id names a finished job of the caller's; and an Idempotency-Key reused with another body is
refused by design (422), not for the data; nor that a webhook URL is on a public address, or that
its tenant made a signing secret first. So positive cases carry a real 1×1 PNG in each image field,
a public endpoint URL, no job webhook, and a key of their own; negative cases go out as generated. The comparer never sees a
generated URL either way (it does not run in that test).
"""

from __future__ import annotations

import uuid

import schemathesis

from services.ingest.api_models import EXAMPLE_IMAGE

IMAGE_FIELDS = ("target_image", "generated_image", "reference_image")
#: A schema cannot say "on a public address" either: positive endpoint registrations use this one
#: (no delivery is ever attempted: the webhooks service does not run in that test).
WEBHOOK_URL = "https://hooks.game.example.com/forgeline"


@schemathesis.hook
def map_case(context, case):
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    if isinstance(case.body, dict):
        for field in IMAGE_FIELDS:
            if isinstance(case.body.get(field), str):
                case.body[field] = EXAMPLE_IMAGE
        if case.operation.path == "/v1/webhooks/endpoints" and isinstance(case.body.get("url"), str):
            case.body["url"] = WEBHOOK_URL
        if case.operation.path == "/v1/generations":
            # A job's webhook_url needs its tenant's signing secret first, which a generated
            # tenant has not made; tests/e2e/test_webhooks.py covers it.
            case.body.pop("webhook_url", None)
            case.body.pop("webhook_events", None)
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str):
        case.headers["Idempotency-Key"] = f"{key[:200]}-{uuid.uuid4().hex}"
    return case
