"""Redis clients built from settings, and the key layout all services share."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from services.common.autopipeline import AutoPipelineRedis
from services.common.settings import RedisSettings


def make_redis(settings: RedisSettings) -> Redis:
    """An asyncio Redis client (bytes in, bytes out) with explicit timeouts.

    With ``auto_pipeline`` (the default) the commands of one event-loop turn share a write.
    """
    client_class = AutoPipelineRedis if settings.auto_pipeline else Redis
    return client_class.from_url(
        settings.url.get_secret_value(),
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
        health_check_interval=30,
    )


@dataclass(frozen=True)
class KeySpace:
    """Every Redis key Forgeline writes starts with one prefix, so tenants of a shared Redis never collide."""

    prefix: str

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)


def hashtag(value: str) -> str:
    """``value`` as a Redis Cluster hash tag, ``{value}``: keys sharing it share a slot.

    Every key one Lua script or transaction touches carries the same tag, so the script runs on
    one node of a cluster instead of failing with CROSSSLOT; on a single Redis it changes nothing.
    """
    if not value or "{" in value or "}" in value:
        raise ValueError(f"{value!r} cannot be a hash tag")
    return "{" + value + "}"
