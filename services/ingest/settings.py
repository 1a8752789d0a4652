"""Settings of the ingest API (env prefix ``FORGELINE_INGEST_``)."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from services.common.settings import MiB, service_config


class IngestSettings(BaseSettings):
    model_config = service_config("FORGELINE_INGEST_")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(14 * MiB, ge=64 * 1024, description="Larger request bodies get 413.")
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Client API keys (JSON list). Empty: no authentication (local development only).",
    )
    status_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="How long job status stays readable.")
