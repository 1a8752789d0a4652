"""Who may see the dashboard: anyone when the API runs without keys; otherwise the operator only.

The operator presents ``FORGELINE_INGEST_OPERATOR_KEY`` once, on the login form (or as
``Authorization: Bearer`` from a script); the browser then keeps a cookie holding an HMAC of
the key, never the key itself, so neither appears in URLs, logs or the page.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request
from pydantic import SecretStr

from services.ingest.deps import IngestDeps

COOKIE = "forgeline_operator"
COOKIE_MAX_AGE_S = 12 * 3600


def session_token(operator_key: SecretStr) -> str:
    return hmac.new(operator_key.get_secret_value().encode(), b"forgeline-dashboard-v1", hashlib.sha256).hexdigest()


def is_operator_key(presented: str, operator_key: SecretStr) -> bool:
    return hmac.compare_digest(presented.encode(), operator_key.get_secret_value().encode())


def admitted(request: Request, deps: IngestDeps) -> bool | None:
    """True: show the dashboard; False: ask for the key; None: the dashboard is off (keys on, no operator key)."""
    if not deps.auth_enabled:
        return True
    operator_key = deps.settings.operator_key
    if operator_key is None:
        return None
    cookie = request.cookies.get(COOKIE)
    if cookie is not None and hmac.compare_digest(cookie.encode(), session_token(operator_key).encode()):
        return True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(credentials) and is_operator_key(credentials, operator_key)
