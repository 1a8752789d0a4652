"""Settings of the comparer (env prefix ``FORGELINE_COMPARER_``).

The VLM is used when it has keys (``FORGELINE_COMPARER_VLM_KEYS`` or ``..._VLM_KEYS_FILE``);
without any, every comparison is perceptual.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import AnyHttpUrl, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.keypool import ApiKey, keys_from_env, keys_from_file
from services.common.settings import service_config


class ComparerSettings(BaseSettings):
    # hide_input_in_errors: a malformed key list must not be printed in the error.
    model_config = SettingsConfigDict(**service_config("FORGELINE_COMPARER_"), hide_input_in_errors=True)

    concurrency: int = Field(4, ge=1, le=64, description="Comparisons in flight per process.")
    vlm_base_url: AnyHttpUrl = AnyHttpUrl("https://api.siliconflow.cn")
    vlm_model: str = Field("Qwen/Qwen3-VL-8B-Instruct", min_length=1)
    vlm_name: str = Field("siliconflow-vlm", pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
                          description="Names the VLM's keys, breaker and metrics.")
    vlm_keys: SecretStr | None = Field(None, description="VLM API keys, comma or newline separated.")
    vlm_keys_file: Path | None = Field(None, description="Secret file with one VLM key per line.")
    vlm_timeout_s: float = Field(60.0, gt=0, le=600)
    vlm_attempts: int = Field(3, ge=1, le=10, description="VLM calls per comparison, across keys.")
    vlm_cost_usd: Decimal = Field(
        Decimal("0.0005"), ge=0,
        description="Charged to the monthly budget per VLM comparison (two images at ~1k tokens each, with room).")
    cache_ttl_s: int = Field(24 * 3600, ge=0, description="How long a comparison result answers repeats.")
    fetch_timeout_s: float = Field(15.0, gt=0, le=120, description="Time limit for fetching an image URL.")
    allow_loopback_urls: bool = Field(False, description="Tests only: let image URLs point at 127.0.0.1.")
    shutdown_timeout_s: float = Field(75.0, gt=0, le=3600)
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus metrics on this port.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def api_keys(self) -> list[ApiKey]:
        """The VLM's keys, from ``vlm_keys`` and ``vlm_keys_file`` (empty: no VLM, perceptual only)."""
        keys = keys_from_env(self.vlm_keys, self.vlm_name)
        if self.vlm_keys_file is not None:
            keys += keys_from_file(self.vlm_keys_file, self.vlm_name)
        return keys
