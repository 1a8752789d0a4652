"""Who is calling: an API key names its tenant; without configured keys, a header may.

Tenants' keys are looked up by their SHA-256 in Redis (``TenantStore``); the deprecated plain-text
keys of ``FORGELINE_INGEST_API_KEYS`` are compared in constant time. Keys never appear in
responses, logs or reprs.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import SecretStr

from services.common.contracts import Tenant
from services.common.tenants import KEY_PREFIX, Caller, TenantLimits
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


async def current_caller(
    deps: Annotated[IngestDeps, Depends(get_deps)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
    x_forgeline_tenant: Annotated[
        Tenant | None,
        Header(alias="X-Forgeline-Tenant", description="The tenant of the job, when the API runs without keys."),
    ] = None,
) -> str:
    """The caller: tenant, key and limits. 401 when keys are configured and none of them was presented."""
    presented = bearer.credentials if bearer is not None else api_key
    caller = await resolve_caller(deps, presented, x_forgeline_tenant)
    if caller is None:
        raise HTTPException(
            status_code=401,
            detail="missing or unknown API key: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return caller


async def resolve_caller(deps: IngestDeps, presented: str | None, x_forgeline_tenant: str | None) -> Caller | None:
    """The caller of a request that ``presented`` a key (or none) and named a tenant (or none);
    None when keys are configured and ``presented`` is none of them."""
    if not deps.auth_enabled:
        return await _unkeyed(x_forgeline_tenant or DEFAULT_TENANT, deps)
    if presented and presented.startswith(KEY_PREFIX) and deps.tenants is not None and deps.settings.tenant_keys:
        return await deps.tenants.caller(presented)
    if presented and (tenant := tenant_for_key(presented, deps.settings.api_keys)) is not None:
        return await _unkeyed(tenant, deps)
    return None


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents, read from its raw headers as ``current_caller``'s two schemes read it:
    ``Authorization: Bearer <key>`` first, else ``X-API-Key``."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if authorization and scheme.lower() == "bearer" and credentials:
        return credentials
    return x_api_key or None


async def _unkeyed(tenant: str, deps: IngestDeps) -> Caller:
    """A caller without a key record (no authentication, or a deprecated env key): its tenant's limits only."""
    limits = await deps.tenants.limits(tenant) if deps.tenants is not None else TenantLimits()
    return Caller(tenant=tenant, key_id=None, tenant_limits=limits)


CallerDep = Annotated[Caller, Depends(current_caller)]


async def current_tenant(caller: CallerDep) -> str:
    """The caller's tenant (FastAPI resolves the caller once per request, however many use it)."""
    return caller.tenant


TenantDep = Annotated[str, Depends(current_tenant)]
DepsDep = Annotated[IngestDeps, Depends(get_deps)]
