"""Settings of the router (env prefix ``FORGELINE_ROUTER_``)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from services.common.settings import service_config


class RouterSettings(BaseSettings):
    model_config = service_config("FORGELINE_ROUTER_")

    group_id: str = Field("forgeline-router", min_length=1)
    primary_group_id: str = Field(
        "forgeline-generator-primary", min_length=1,
        description="Consumer group of the primary generators, whose lag is the primary queue depth.",
    )
    depth_high: int = Field(50, ge=1, description="Route to fallback once primary depth reaches this.")
    depth_low: int = Field(35, ge=0, description="Route back to primary once depth falls below this.")
    depth_refresh_s: float = Field(1.0, gt=0, le=10, description="How often queue depth is re-read.")

    @model_validator(mode="after")
    def _hysteresis_band(self) -> RouterSettings:
        if self.depth_low >= self.depth_high:
            raise ValueError(f"depth_low ({self.depth_low}) must be below depth_high ({self.depth_high})")
        return self
