"""Who is calling: an API key names its tenant; without configured keys, a header may.

Keys are compared in constant time and never appear in responses, logs or reprs.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from services.common.contracts import Tenant
from services.ingest.deps import IngestDeps

DEFAULT_TENANT = "public"

# auto_error=False: we answer a missing key ourselves, with one message for both schemes.
_bearer = HTTPBearer(auto_error=False, description="The tenant's API key, as 'Authorization: Bearer <key>'.")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="The tenant's API key.")


async def get_deps(request: Request) -> IngestDeps:
    """Async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a hop per request."""
    deps: IngestDeps = request.app.state.deps
    return deps


def tenant_for_key(presented: str, api_keys: Mapping[str, SecretStr]) -> str | None:
    """The tenant whose key is ``presented``; every key is compared, so timing says nothing about which matched."""
    found: str | None = None
    candidate = presented.encode()
    for tenant, secret in api_keys.items():
        if hmac.compare_digest(candidate, secret.get_secret_value().encode()):
            found = tenant
    return found


async def current_tenant(
    deps: Annotated[IngestDeps, Depends(get_deps)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
    x_forgeline_tenant: Annotated[
        Tenant | None,
        Header(alias="X-Forgeline-Tenant", description="The tenant of the job, when the API runs without keys."),
    ] = None,
) -> str:
    """The caller's tenant. 401 when keys are configured and none of them was presented."""
    if not deps.auth_enabled:
        return x_forgeline_tenant or DEFAULT_TENANT
    presented = bearer.credentials if bearer is not None else api_key
    tenant = tenant_for_key(presented, deps.settings.api_keys) if presented else None
    if tenant is None:
        raise HTTPException(
            status_code=401,
            detail="missing or unknown API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return tenant


TenantDep = Annotated[str, Depends(current_tenant)]
DepsDep = Annotated[IngestDeps, Depends(get_deps)]
