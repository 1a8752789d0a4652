"""Settings of the comparer (env prefix ``FORGELINE_COMPARER_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import AnyHttpUrl, Field
from pydantic_settings import BaseSettings

from services.common.settings import service_config


class ComparerSettings(BaseSettings):
    model_config = service_config("FORGELINE_COMPARER_")

    concurrency: int = Field(4, ge=1, le=64)
    vlm_base_url: AnyHttpUrl = AnyHttpUrl("https://api.siliconflow.cn")
    vlm_model: str = Field("Qwen/Qwen3-VL-8B-Instruct", min_length=1)
    vlm_timeout_s: float = Field(60.0, gt=0, le=600)
    allow_loopback_urls: bool = Field(False, description="Tests only: let image URLs point at 127.0.0.1.")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus metrics on this port.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
