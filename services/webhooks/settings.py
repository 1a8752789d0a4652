"""Settings of the webhooks service (env prefix ``FORGELINE_WEBHOOKS_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from services.common.settings import service_config

#: The Standard Webhooks suggested schedule: immediately, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h
#: after each failure (eight attempts over about 27.5 hours).
SPEC_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)


class WebhooksSettings(BaseSettings):
    model_config = service_config("FORGELINE_WEBHOOKS_")

    schedule_s: tuple[float, ...] = Field(
        SPEC_SCHEDULE_S, min_length=1,
        description="Seconds before each attempt: the first (0: at once), then the wait after each failure. "
                    "JSON list; the default is the Standard Webhooks schedule. The last failure ends the delivery.")
    jitter: float = Field(0.2, ge=0, le=1, description="Each wait is stretched or shrunk by up to this share.")
    max_retry_after_s: float = Field(
        36000, ge=0, description="A receiver's Retry-After is honoured up to this long (the schedule's longest wait).")
    timeout_s: float = Field(15.0, gt=0, le=60, description="One attempt, DNS and connection included.")
    lease_s: float = Field(60.0, gt=0, description="A claimed delivery is tried again by any replica after this long "
                                                   "if its dispatcher dies; above timeout_s.")
    poll_s: float = Field(1.0, gt=0, le=30, description="How often due deliveries are looked for (new ones from this "
                                                        "process are sent at once).")
    concurrency: int = Field(32, ge=1, le=1024, description="Deliveries in flight per process.")
    consumer_concurrency: int = Field(16, ge=1, le=256, description="Terminal events scheduled at once.")
    delivery_ttl_s: int = Field(7 * 24 * 3600, ge=3600, description="How long a job's delivery log is kept.")
    allow_loopback_for_tests: bool = Field(
        False, description="TESTS ONLY, off by default: let deliveries go to 127.0.0.1 over plain http. Every "
                           "other SSRF rule stays (no private, link-local or metadata addresses, no redirects).")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus metrics on this port.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
