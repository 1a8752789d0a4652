"""Operator views and actions on provider keys: ``forgeline keys list | enable``."""

from __future__ import annotations

from collections.abc import Mapping

from services.common.keypool import KeyPool, KeyState
from services.common.redis import KeySpace, make_redis
from services.common.settings import RedisSettings
from services.generator.catalog import ProvidersFile, provider_keys


def key_pools(catalog: ProvidersFile, redis, keys: KeySpace, environ: Mapping[str, str]) -> dict[str, KeyPool]:
    """One pool per provider of the file that has keys (a provider on both paths gets one pool)."""
    pools: dict[str, KeyPool] = {}
    for entry in [*catalog.primary, *catalog.fallback]:
        api_keys = provider_keys(entry, environ)
        if api_keys and entry.name not in pools:
            pools[entry.name] = KeyPool(redis, keys, entry.name, api_keys)
    return pools


async def key_states(catalog: ProvidersFile, redis_settings: RedisSettings,
                     environ: Mapping[str, str]) -> list[KeyState]:
    redis = make_redis(redis_settings)
    try:
        pools = key_pools(catalog, redis, KeySpace(redis_settings.key_prefix), environ)
        return [state for pool in pools.values() for state in await pool.states()]
    finally:
        await redis.aclose()


async def enable_key(catalog: ProvidersFile, redis_settings: RedisSettings, environ: Mapping[str, str],
                     provider: str, key_id: str) -> bool:
    """Re-enable a disabled key; False when it was not disabled. ``KeyError``: no such provider or key."""
    redis = make_redis(redis_settings)
    try:
        pools = key_pools(catalog, redis, KeySpace(redis_settings.key_prefix), environ)
        if provider not in pools:
            raise KeyError(f"no provider {provider!r} with keys; known: {', '.join(pools) or 'none'}")
        return await pools[provider].enable(key_id)
    finally:
        await redis.aclose()
