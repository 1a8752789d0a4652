"""Settings of a generator (env prefix ``FORGELINE_GENERATOR_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from services.common.settings import service_config


class GeneratorSettings(BaseSettings):
    model_config = service_config("FORGELINE_GENERATOR_")

    path: Literal["primary", "fallback"] = "primary"
    group_id_prefix: str = Field("forgeline-generator", min_length=1, description="Group id is <prefix>-<path>.")
    concurrency: int = Field(8, ge=1, le=256, description="Provider calls in flight per process.")
    provider_timeout_s: float = Field(60.0, gt=0, le=600)
    simulated_latency_s: float = Field(0.0, ge=0, le=120, description="Procedural provider only: pretend to be slow.")

    @property
    def group_id(self) -> str:
        return f"{self.group_id_prefix}-{self.path}"
