"""Connection settings shared by every service, and the base class of service settings.

Each group has its own env prefix, so a deployment sets, for example::

    FORGELINE_KAFKA_BOOTSTRAP=kafka:9092
    FORGELINE_REDIS_URL=redis://redis:6379/0
    FORGELINE_S3_ENDPOINT_URL=http://minio:9000
    FORGELINE_TOPICS_PREFIX=forgeline

Settings are read once, by the process entrypoint (``main()``), and passed down; library
code never reads the environment itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from pydantic import AnyHttpUrl, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024

#: Largest Kafka message Forgeline produces or accepts: room for a 2048x2048 PNG in base64.
MAX_MESSAGE_BYTES = 10 * MiB


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, extra="ignore", frozen=True, secrets_dir=None)


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster."""

    model_config = _config("FORGELINE_KAFKA_")

    bootstrap: str = Field(
        "127.0.0.1:19092",
        description="Comma-separated host:port list of bootstrap brokers.",
        min_length=3,
    )
    client_id: str = Field("forgeline", min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "zstd"
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1 * MiB, le=64 * MiB)
    request_timeout_ms: int = Field(30_000, ge=1_000)
    group_instance_id: str | None = Field(
        None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
        description="Static group membership (KIP-345): a name unique to this replica and kept across its "
                    "restarts (the pod's name), so a restarted consumer takes its partitions back without "
                    "a rebalance. Unset: dynamic membership.")

    @field_validator("bootstrap")
    @classmethod
    def _every_server_has_a_port(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port (e.g. 127.0.0.1:9092)")
        return ",".join(servers)


class TopicSettings(BaseSettings):
    """Names and shape of the topics Forgeline owns (see ``services.common.topics``)."""

    model_config = _config("FORGELINE_TOPICS_")

    prefix: str = Field(
        "forgeline",
        pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Shared prefix of every topic name, e.g. 'forgeline' → 'forgeline.generation.requested'.",
    )
    partitions: int = Field(6, ge=1, le=1000)
    replication_factor: int = Field(1, ge=1, le=7)
    retention_ms: int = Field(7 * 24 * 3600 * 1000, ge=60_000, description="How long topics keep messages.")
    dlq_retention_ms: int = Field(30 * 24 * 3600 * 1000, ge=60_000)
    compression: Literal["producer", "uncompressed", "gzip", "lz4", "zstd", "snappy"] = "zstd"
    max_message_bytes: int = Field(MAX_MESSAGE_BYTES, ge=1 * MiB, le=64 * MiB)
    min_insync_replicas: int = Field(1, ge=1)


class RedisSettings(BaseSettings):
    """How to reach Redis (job status, result cache, key pool, budget)."""

    model_config = _config("FORGELINE_REDIS_")

    url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:16379/0"),
        description="redis:// or rediss:// URL; may carry a password, so it is kept secret.",
    )
    key_prefix: str = Field("forgeline:", pattern=r"^[A-Za-z0-9:._-]{1,64}$")
    socket_timeout_s: float = Field(5.0, gt=0)
    auto_pipeline: bool = Field(
        True,
        description="Send the commands a service issues in one event-loop turn as one pipeline write.",
    )

    @field_validator("url")
    @classmethod
    def _is_a_redis_url(cls, value: SecretStr) -> SecretStr:
        scheme = value.get_secret_value().split("://", 1)[0]
        if scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class S3Settings(BaseSettings):
    """Where images are published: any S3-compatible store (AWS S3, Cloudflare R2, MinIO, moto)."""

    model_config = _config("FORGELINE_S3_")

    endpoint_url: AnyHttpUrl | None = Field(
        AnyHttpUrl("http://127.0.0.1:19000"),
        description="S3 API endpoint; unset means AWS S3 itself.",
    )
    region: str = "us-east-1"
    bucket: str = Field("forgeline-dev", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    access_key_id: SecretStr = SecretStr("forgeline")
    secret_access_key: SecretStr = SecretStr("forgeline-secret")
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    max_connections: int = Field(
        32, ge=1, le=1024,
        description="S3 requests in flight per process (threads and pooled connections); keep it at or above "
                    "the storage service's concurrency.")
    signed_put: bool = Field(
        True,
        description="Upload with one SigV4-signed request through urllib3 instead of boto3's put_object "
                    "(about half the CPU, bench/s3_put.py); false: every call through boto3.")
    public_base_url: AnyHttpUrl | None = Field(
        None,
        description=(
            "CDN_BASE_URL: public URL prefix of uploaded objects (e.g. https://cdn.example.com/). "
            "Unset: the endpoint's own URL, <endpoint>/<bucket>/."
        ),
    )

    def public_url(self, key: str) -> str:
        """The URL a browser loads ``key`` from."""
        if self.public_base_url is not None:
            return f"{str(self.public_base_url).rstrip('/')}/{key}"
        if self.endpoint_url is None:
            return f"https://{self.bucket}.s3.{self.region}.amazonaws.com/{key}"
        return f"{str(self.endpoint_url).rstrip('/')}/{self.bucket}/{key}"


class BudgetSettings(BaseSettings):
    """The paid path's monthly cap, shared by routers and generators (seeds 002, 004)."""

    model_config = _config("FORGELINE_BUDGET_")

    cap_usd: Decimal = Field(Decimal("10"), ge=0, description="Paid spend allowed per calendar month (UTC).")
    reservation_ttl_s: int = Field(900, ge=60, description="A reservation never settled is released after this.")
    journal: bool = Field(True, description="Record paid spend in S3 too, and rebuild a lost ledger from it.")
    journal_prefix: str = Field("billing", description="Object key prefix of the spend journal.")
    journal_bucket: str | None = Field(None, description="A private bucket for the journal (default: FORGELINE_S3_BUCKET).")


class CacheSettings(BaseSettings):
    """Whose results the result cache shares (ingest, router and storage must agree: set it for all three)."""

    model_config = _config("FORGELINE_CACHE_")

    scope: Literal["tenant", "shared"] = Field(
        "tenant", description="tenant: a tenant is answered only from its own results (the default: one tenant "
                              "never sees another's prompts, URLs or metadata); shared: every tenant is answered "
                              "from every tenant's results, for deployments whose tenants are one company's games.")


@dataclass(frozen=True)
class Connections:
    """The shared connection settings every service is built with."""

    kafka: KafkaSettings
    topics: TopicSettings
    redis: RedisSettings
    s3: S3Settings

    @classmethod
    def from_env(cls) -> Connections:
        """Read every group from the environment. Call from ``main()`` only."""
        return cls(kafka=KafkaSettings(), topics=TopicSettings(), redis=RedisSettings(), s3=S3Settings())


def service_config(prefix: str) -> SettingsConfigDict:
    """The model config of a service's own settings class, e.g. ``service_config("FORGELINE_ROUTER_")``."""
    return _config(prefix)


def env_names(settings_cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads (for docs and the compose-file check)."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in settings_cls.model_fields}


SHARED_SETTINGS: tuple[type[BaseSettings], ...] = (KafkaSettings, TopicSettings, RedisSettings, S3Settings,
                                                  BudgetSettings, CacheSettings)
