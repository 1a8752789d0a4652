"""schemathesis hooks for tests/e2e/test_schemathesis.py: what a schema cannot say, positive cases get right.

A schema can say a field is a ``data:image/…`` URL but not that its bytes are a PNG, nor that a
job id names a finished job of the caller's; and an Idempotency-Key reused with another body is
refused by design (422), not for the data. So positive cases carry a real 1×1 PNG in each image
field and a key of their own; negative cases go out as generated. The comparer never sees a
generated URL either way (it does not run in that test).
"""

from __future__ import annotations

import uuid

import schemathesis

from services.ingest.api_models import EXAMPLE_IMAGE

IMAGE_FIELDS = ("target_image", "generated_image", "reference_image")


@schemathesis.hook
def map_case(context, case):
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    if isinstance(case.body, dict):
        for field in IMAGE_FIELDS:
            if isinstance(case.body.get(field), str):
                case.body[field] = EXAMPLE_IMAGE
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str):
        case.headers["Idempotency-Key"] = f"{key[:200]}-{uuid.uuid4().hex}"
    return case
