"""Settings of the ingest API (env prefix ``FORGELINE_INGEST_``).

Tenants' API keys live hashed in Redis (``forgeline tenants``, ``FORGELINE_INGEST_TENANT_KEYS=true``).
Deprecated, for a migration: keys in plain text, tenant → key, as JSON::

    FORGELINE_INGEST_API_KEYS='{"studio-alpha": "k_live_...", "studio-beta": "k_live_..."}'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.contracts import Tenant
from services.common.settings import MiB, service_config


class IngestSettings(BaseSettings):
    # hide_input_in_errors: a bad FORGELINE_INGEST_API_KEYS must not print the keys in the error.
    # populate_by_name: ``IngestSettings(providers_file=...)`` works besides its environment aliases.
    model_config = SettingsConfigDict(**service_config("FORGELINE_INGEST_"), hide_input_in_errors=True,
                                      populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64, description="Ingest processes sharing the port (SO_REUSEPORT), one core each.")
    worker_index: int = Field(0, ge=0, le=63, description="Set by the first worker for the siblings it starts.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_body_bytes: int = Field(
        14 * MiB, ge=1024,
        description="Larger request bodies get 413 (room for a reference image as a data: URL).",
    )
    max_comparison_body_bytes: int = Field(
        28 * MiB, ge=1024, description="The body limit of POST /v1/comparisons: room for two 10 MB images as data: URLs.")
    comparison_wait_max_s: float = Field(60.0, gt=0, le=300, description="The largest ?wait= a comparison may ask for.")
    allow_loopback_urls: bool = Field(
        False, description="Tests only: accept image and webhook URLs on 127.0.0.1 and plain http.")
    # Tenant-typed keys: a key's tenant is stamped on every job it submits, so it must be a valid one.
    api_keys: dict[Tenant, SecretStr] = Field(
        default_factory=dict,
        description=(
            "Deprecated (plain text; use tenant_keys): tenant → API key (JSON object). Clients send the key as "
            "'Authorization: Bearer <key>' or 'X-API-Key'; its tenant owns the jobs. Empty and tenant_keys off: no "
            "authentication (local development only)."
        ),
    )
    tenant_keys: bool = Field(
        False, description="Require API keys, checked against the tenants' hashed keys in Redis (`forgeline tenants`).")
    tenant_lookup_ttl_s: float = Field(
        5.0, ge=0, le=300, description="How long a replica keeps a key's lookup: a revocation takes effect within it.")
    status_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="How long job status and idempotency keys live.")
    local_cache_size: int = Field(1024, ge=0, description="Entries of the in-process result-cache LRU.")
    local_cache_ttl_s: float = Field(300.0, ge=0, description="Lifetime of an in-process result-cache entry.")
    fast_cache_hits: bool = Field(
        True, description="Answer a plain POST /v1/generations whose result this process holds in memory before "
                          "FastAPI's routing (services/ingest/fastpath.py); off: every request takes the full route.")
    sse_keepalive_s: float = Field(15.0, gt=0, le=300, description="A ': keepalive' comment this often on /events.")
    publish_timeout_s: float = Field(
        15.0, gt=0, le=300,
        description="How long a POST waits for Kafka to acknowledge the job before answering 503.")
    shutdown_grace_s: float = Field(10.0, ge=0, le=300,
                                    description="On shutdown, how long open requests and event streams may finish.")
    probe_timeout_s: float = Field(2.0, gt=0, le=30, description="How long /readyz and /v1/status wait for a dependency.")
    # Either variable: one FORGELINE_GENERATOR_PROVIDERS_FILE configures the generators and this view of them.
    providers_file: Path | None = Field(
        None,
        validation_alias=AliasChoices("FORGELINE_INGEST_PROVIDERS_FILE", "FORGELINE_GENERATOR_PROVIDERS_FILE"),
        description=("The generators' providers file: /v1/status shows each provider's keys and circuit "
                     "breaker. Unset: no providers are shown."),
    )

    operator_key: SecretStr | None = Field(
        None, description="The key that opens /dashboard when API keys are on (the operator sees every tenant).")
    # The router's and storage's own variables, as the dashboard's diagram states them.
    routing_depth_high: int = Field(
        50, ge=1, validation_alias=AliasChoices("FORGELINE_INGEST_ROUTING_DEPTH_HIGH", "FORGELINE_ROUTER_DEPTH_HIGH"))
    routing_depth_low: int = Field(
        35, ge=0, validation_alias=AliasChoices("FORGELINE_INGEST_ROUTING_DEPTH_LOW", "FORGELINE_ROUTER_DEPTH_LOW"))
    result_cache_ttl_s: int = Field(
        24 * 3600, ge=1,
        validation_alias=AliasChoices("FORGELINE_INGEST_RESULT_CACHE_TTL_S", "FORGELINE_STORAGE_CACHE_TTL_S"))

    @field_validator("operator_key")
    @classmethod
    def _operator_key_is_usable(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_name_their_tenant(cls, value: object) -> object:
        if isinstance(value, list | tuple):  # the old format: a bare list of keys
            # ValueError, not TypeError: pydantic reports only ValueError as a validation error.
            raise ValueError(  # noqa: TRY004
                'must be a JSON object of tenant → key, e.g. {"studio-alpha": "<key>"}: '
                "each key's tenant owns the jobs it submits")
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_are_usable(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        seen: dict[str, str] = {}
        for tenant, key in value.items():
            secret = key.get_secret_value()
            # Never quote the key itself: this message ends up in logs.
            if len(secret) < 8 or secret != secret.strip():
                raise ValueError(f"the key of tenant {tenant!r} must be at least 8 characters, no surrounding spaces")
            if secret in seen:
                raise ValueError(f"tenants {seen[secret]!r} and {tenant!r} share a key; give each its own")
            seen[secret] = tenant
        return value

    def body_limit(self, path: str) -> int:
        """The request body limit for ``path``: comparisons carry two images."""
        return self.max_comparison_body_bytes if path.startswith("/v1/comparisons") else self.max_body_bytes
