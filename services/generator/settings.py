"""Settings of a generator (env prefix ``FORGELINE_GENERATOR_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from services.common.settings import service_config


class GeneratorSettings(BaseSettings):
    model_config = service_config("FORGELINE_GENERATOR_")

    path: Literal["primary", "fallback"] = "primary"
    concurrency: int = Field(8, ge=1, le=4096, description="Provider calls in flight per process.")
    attempts: int = Field(3, ge=1, le=10, description="Provider calls per job, across keys and providers (seed 000).")
    key_wait_s: float = Field(10.0, ge=0, le=300, description="How long a job waits in all for a cooling key "
                              "(every key of its path rate-limited) before it fails; 0: fail at once.")
    providers_file: Path | None = Field(None, description="YAML naming each path's providers; unset: procedural.")
    shutdown_timeout_s: float = Field(
        75.0, gt=0, le=3600,
        description="On SIGTERM, how long in-flight jobs may finish; keep below the pod's termination grace period.")
    coalesce_lease_s: float = Field(30.0, gt=0, le=3600, description="Coalescing lease of a leader being generated, "
                                    "renewed every third of it (as the router's FORGELINE_ROUTER_COALESCE_LEASE_S).")
    commit_interval_s: float = Field(0.5, gt=0, le=3600, description="How often finished offsets are committed.")
    simulated_latency_s: float = Field(0.0, ge=0, le=120, description="Procedural provider only: pretend to be slow.")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus metrics on this port.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
