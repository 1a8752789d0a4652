"""A real local stack for development and integration tests, without Docker.

Kafka (jars from Maven Central; one node or a cluster), Redis (Debian's redis-server) and an S3
API (S3Proxy on disk, jars from Maven Central too; or moto in memory) run as
background processes with pid files and logs under ``DevStackSettings.state_dir``; so can the
pipeline's own services (``pipeline(settings)``), as ``make demo`` does.
"""

from __future__ import annotations

from services.devstack.cluster import KafkaCluster
from services.devstack.component import ComponentStatus
from services.devstack.errors import DevStackError, Progress
from services.devstack.kafka import kafka_version, render_server_properties
from services.devstack.settings import DevStackSettings
from services.devstack.stack import (
    COMPONENT_NAMES,
    down,
    env,
    ingest_url,
    pipeline,
    reset,
    status,
    up,
)

__all__ = [
    "COMPONENT_NAMES",
    "ComponentStatus",
    "DevStackError",
    "DevStackSettings",
    "KafkaCluster",
    "Progress",
    "down",
    "env",
    "ingest_url",
    "kafka_version",
    "pipeline",
    "render_server_properties",
    "reset",
    "status",
    "up",
]
