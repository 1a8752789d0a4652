"""Where and how the local dev stack (Kafka, Redis, S3) runs.

Every value has a default that works on a developer machine; override with
``FORGELINE_DEV_*`` variables (``KAFKA_HOME`` is honoured too, as Kafka's own scripts do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings

from services.common.settings import service_config


class DevStackSettings(BaseSettings):
    """Ports, folders and sizes of the local stack started by ``forgeline dev up``."""

    model_config = service_config("FORGELINE_DEV_")

    state_dir: Path = Field(
        Path("~/.local/state/forgeline/dev"),
        description="Pid files, logs, server configs and Kafka's data live here (one folder per component).",
    )
    cache_dir: Path = Field(
        Path("~/.cache/forgeline"),
        description="Downloaded Kafka and S3Proxy jars; kept apart from state_dir so throwaway test states reuse them.",
    )
    host: str = Field("127.0.0.1", description="Interface every component binds to (loopback: nothing is exposed).")
    kafka_port: int = Field(19092, gt=0, lt=65536, description="Broker 1's port; broker n's is this + 2(n-1).")
    kafka_controller_port: int = Field(19093, gt=0, lt=65536, description="Broker 1's controller port (+ 2(n-1)).")
    kafka_brokers: int | None = Field(
        None, ge=1, le=5,
        description="KRaft nodes (`dev up --brokers 3`); unset: as many as the state dir was formatted with, or 1.",
    )
    redis_port: int = Field(16379, gt=0, lt=65536)
    s3_port: int = Field(19000, gt=0, lt=65536)
    s3_server: Literal["s3proxy", "moto"] = Field(
        "s3proxy", description="s3proxy keeps objects on disk under state_dir; moto keeps them in memory only."
    )
    s3_heap: str = Field("256m", pattern=r"^[0-9]+[kKmMgG]$", description="JVM -Xmx of S3Proxy.")
    s3_bucket: str = Field("forgeline-dev", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    ingest_port: int = Field(18080, gt=0, lt=65536, description="Port of the local pipeline's ingest API.")
    # The local pipeline mimics the production shape at a small scale: a slow free path with
    # little capacity, so a burst of requests visibly overflows to the fast (paid) fallback.
    fake_providers_port: int = Field(19100, gt=0, lt=65536, description="First port of the fake providers.")
    primary_latency_s: float = Field(1.5, ge=0, le=120, description="Latency of the fake Space on the primary path.")
    primary_concurrency: int = Field(1, ge=1, le=64, description="Images in flight on the primary generator.")
    depth_high: int = Field(4, ge=1, description="The local router's FORGELINE_ROUTER_DEPTH_HIGH.")
    depth_low: int = Field(2, ge=0, description="The local router's FORGELINE_ROUTER_DEPTH_LOW.")
    kafka_heap: str = Field("512m", pattern=r"^[0-9]+[kKmMgG]$", description="JVM -Xmx of the broker.")
    kafka_home: Path | None = Field(
        None,
        validation_alias=AliasChoices("FORGELINE_DEV_KAFKA_HOME", "KAFKA_HOME", "kafka_home"),
        description="An extracted Kafka distribution; its libs/ replace the Maven download.",
    )

    @field_validator("state_dir", "cache_dir", "kafka_home")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        # "~" in a default or an env value means the user's home, as in a shell.
        return value.expanduser() if value is not None else None

    def env_name(self, field: str) -> str:
        """The variable that overrides ``field``, for error messages ("set FORGELINE_DEV_KAFKA_PORT")."""
        return f"{self.model_config.get('env_prefix', '')}{field}".upper()
