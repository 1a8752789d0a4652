"""Redis clients built from settings, and the key layout all services share."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from services.common.settings import RedisSettings


def make_redis(settings: RedisSettings) -> Redis:
    """An asyncio Redis client (bytes in, bytes out) with explicit timeouts."""
    return Redis.from_url(
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
