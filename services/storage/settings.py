"""Settings of the storage service (env prefix ``FORGELINE_STORAGE_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from services.common.settings import service_config


class StorageSettings(BaseSettings):
    model_config = service_config("FORGELINE_STORAGE_")

    cache_ttl_s: int = Field(24 * 3600, ge=1, description="Result cache lifetime in Redis (seed 004: 24 h).")
    local_cache_size: int = Field(1024, ge=0, description="Entries of the in-process LRU in front of Redis.")
    local_cache_ttl_s: float = Field(300.0, ge=0)
    key_prefix: str = Field("images/", pattern=r"^[A-Za-z0-9/._-]{0,100}$", description="Object key prefix.")
    concurrency: int = Field(16, ge=1, le=256, description="Uploads in flight per process.")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus metrics on this port.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
