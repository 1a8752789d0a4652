"""Settings of the router (env prefix ``FORGELINE_ROUTER_``)."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from services.common.settings import service_config


class RouterSettings(BaseSettings):
    model_config = service_config("FORGELINE_ROUTER_")

    depth_high: int = Field(50, ge=1, description="Route to fallback once primary depth reaches this (both policies).")
    depth_low: int = Field(35, ge=0, description="Route back to primary once depth falls below this.")
    depth_refresh_s: float = Field(1.0, gt=0, le=10, description="How often queue depth is re-read.")
    rate_window_s: float = Field(30.0, gt=0, le=3600,
                                 description="Sliding window over which the primary's service rate is measured.")
    policy: Literal["deadline", "hysteresis"] = Field(
        "deadline", description="deadline: pay only for jobs the primary would serve too late or after max_wait_s; "
                                "hysteresis: the depth band (depth_high/depth_low) for jobs without a deadline.")
    max_wait_s: float = Field(300.0, gt=0, le=86_400,
                              description="deadline policy: fallback once a job's estimated wait on primary passes this.")
    primary_service_s: float = Field(40.0, gt=0, le=3600,
                                     description="deadline policy: seconds one image takes on primary (deadline margin).")
    primary_slots: int = Field(2, ge=1, le=10_000, description="deadline policy: images the primary serves at "
                               "once (one per free Space): a job waits only once that many are ahead of it.")
    primary_min_rate: float = Field(0.02, gt=0, le=1000, description="deadline policy: images/s the estimated "
                                    "wait assumes at least, whatever the window measured (0 completions is noise).")
    paid_cost_usd: Decimal = Field(Decimal("0.0023"), gt=0,
                                   description="Cost of one image on the cheapest paid provider (budget gate).")

    coalesce: bool = Field(True, description="Identical requests in flight at once share one provider call.")
    coalesce_lease_s: float = Field(30.0, gt=0, le=3600, description="A coalescing leader's lease: a leader being "
                                    "generated that stops renewing it for this long loses it to a follower.")
    coalesce_sweep_s: float = Field(1.0, gt=0, le=60, description="How often leases past their deadline are checked.")
    cache_ttl_s: int = Field(24 * 3600, ge=1, description="Result cache lifetime (as storage's).")
    concurrency: int = Field(32, ge=1, le=1024, description="Requests routed at once.")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus metrics on this port.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _hysteresis_band(self) -> RouterSettings:
        if self.depth_low >= self.depth_high:
            raise ValueError(f"depth_low ({self.depth_low}) must be below depth_high ({self.depth_high})")
        return self
