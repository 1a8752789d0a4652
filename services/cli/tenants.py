"""``forgeline tenants …``: tenants, their limits and their API keys (shown once, stored hashed)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from services.cli._console import console, fail, read_settings

app = typer.Typer(no_args_is_help=True, help="Tenants: their limits and API keys (kept hashed in Redis).")

T = TypeVar("T")

_RATE = typer.Option("--rate", help="Requests per second (token bucket refill).", min=0.001)
_BURST = typer.Option("--burst", help="Bucket size: requests at once after a pause (default: the rate, ≥ 1).", min=1)


def _with_store(action: Callable[..., Awaitable[T]]) -> T:
    """Run ``action(store)`` on a TenantStore of the configured Redis (FORGELINE_REDIS_*)."""
    from services.common.redis import KeySpace, make_redis
    from services.common.settings import RedisSettings
    from services.common.tenants import TenantStore

    settings = read_settings(RedisSettings)

    async def run() -> T:
        redis = make_redis(settings)
        try:
            return await action(TenantStore(redis, KeySpace(settings.key_prefix), lookup_ttl_s=0))
        finally:
            await redis.aclose()

    try:
        return asyncio.run(run())
    except OSError as exc:
        raise fail(f"Redis did not answer: {type(exc).__name__}", "check FORGELINE_REDIS_URL") from None


@app.command("set")
def tenants_set(
    tenant: Annotated[str, typer.Argument(help="The tenant's name (letters, digits, '-', '_').")],
    rate: Annotated[float | None, _RATE] = None,
    burst: Annotated[int | None, _BURST] = None,
    max_in_flight: Annotated[int | None, typer.Option("--max-in-flight", min=1,
                                                      help="Jobs queued or running at once.")] = None,
    budget: Annotated[float | None, typer.Option("--budget", min=0,
                                                 help="Paid spend per month, USD (unset: the global cap only).")] = None,
) -> None:
    """Create a tenant or replace its limits (an option left out means no limit of that kind)."""
    from pydantic import ValidationError

    from services.common.contracts import Tenant
    from services.common.tenants import TenantLimits

    try:
        name = _tenant_name(tenant, Tenant)
        limits = TenantLimits(rate_per_s=rate, burst=burst, max_in_flight=max_in_flight, monthly_budget_usd=budget)
    except ValidationError as exc:
        raise fail("invalid tenant or limits: " + escape(exc.errors(include_url=False)[0]["msg"])) from None
    async def save(store) -> float:
        await store.set_limits(name, limits)
        return sum(t.monthly_budget_usd or 0 for t, _keys in (await store.tenants()).values())

    budgets = _with_store(save)
    console.print(f"tenant {name}: {limits.model_dump(exclude_none=True) or 'no limits'}")
    _warn_if_overcommitted(budgets)


def _warn_if_overcommitted(budgets: float) -> None:
    """Tenants' budgets beyond the deployment's cap: the first to spend can leave the others nothing."""
    from services.common.settings import BudgetSettings

    cap = float(read_settings(BudgetSettings).cap_usd)
    if budgets > cap:
        console.print(f"[yellow]warning:[/] the tenants' budgets add up to ${budgets:.2f}, above the deployment's "
                      f"monthly cap of ${cap:.2f} (FORGELINE_BUDGET_CAP_USD): a tenant within its own budget may "
                      "still be refused once the others have spent the cap")


def _tenant_name(value: str, tenant_type) -> str:
    from pydantic import TypeAdapter

    return TypeAdapter(tenant_type).validate_python(value)


@app.command("add-key")
def tenants_add_key(
    tenant: Annotated[str, typer.Argument(help="The tenant the key acts for (created without limits if new).")],
    rate: Annotated[float | None, _RATE] = None,
    burst: Annotated[int | None, _BURST] = None,
) -> None:
    """Make an API key for TENANT and print it once (only its SHA-256 is kept). --rate/--burst: the key's own
    bucket, on top of the tenant's."""
    from pydantic import ValidationError

    from services.common.contracts import Tenant
    from services.common.tenants import Limits

    try:
        name = _tenant_name(tenant, Tenant)
        limits = Limits(rate_per_s=rate, burst=burst)
    except ValidationError as exc:
        raise fail("invalid tenant or limits: " + escape(exc.errors(include_url=False)[0]["msg"])) from None
    record, key = _with_store(lambda store: store.create_key(name, limits))
    console.print(f"key {record.key_id} for tenant {record.tenant}; it is shown this once:")
    typer.echo(key)  # stdout alone, so `forgeline tenants add-key x > key.txt` keeps just the key


@app.command("revoke")
def tenants_revoke(key_id: Annotated[str, typer.Argument(help="The key's id, as `forgeline tenants list` shows.")],
                   ) -> None:
    """Revoke a key: requests with it get 401 (within FORGELINE_INGEST_TENANT_LOOKUP_TTL_S on every replica)."""
    record = _with_store(lambda store: store.revoke(key_id))
    if record is None:
        raise fail(f"no key {key_id!r}", "`forgeline tenants list` shows the key ids")
    console.print(f"revoked key {record.key_id} of tenant {record.tenant}")


@app.command("list")
def tenants_list() -> None:
    """Every tenant with its limits and key ids (the keys themselves are not kept)."""
    from services.common.tenants import limits_json

    found = _with_store(lambda store: store.tenants())
    table = Table(title="Tenants")
    for column in ("tenant", "limits", "key id", "key limits", "created"):
        table.add_column(column)
    for name, (limits, records) in found.items():
        table.add_row(name, limits_json(limits), "", "", "")
        for record in records:
            table.add_row("", "", record.key_id, limits_json(record.limits),
                          record.created_at.isoformat(timespec="seconds"))
    Console().print(table if found else "no tenants: `forgeline tenants set <name>` makes one")
