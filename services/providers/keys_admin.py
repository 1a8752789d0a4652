"""Operator views and actions on provider keys: ``forgeline keys list | enable``.

The providers file's keys, plus any others a caller names (``extra``: the comparer's VLM keys).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.common.keypool import ApiKey, KeyState, RedisKeyPool
from services.common.ports import KeyPool
from services.common.redis import KeySpace, make_redis
from services.common.settings import RedisSettings
from services.providers.catalog import ProvidersFile, provider_keys


def key_pools(catalog: ProvidersFile, redis, keys: KeySpace, environ: Mapping[str, str],
              extra: Mapping[str, list[ApiKey]] | None = None) -> dict[str, KeyPool]:
    """One pool per provider of the file that has keys (a provider on both paths gets one pool),
    and one per ``extra`` provider with keys."""
    pools: dict[str, KeyPool] = {name: RedisKeyPool(redis, keys, name, api_keys)
                                 for name, api_keys in (extra or {}).items() if api_keys}
    for entry in [*catalog.primary, *catalog.fallback]:
        api_keys = provider_keys(entry, environ)
        if api_keys and entry.name not in pools:
            pools[entry.name] = RedisKeyPool(redis, keys, entry.name, api_keys)
    return pools


async def key_states(catalog: ProvidersFile, redis_settings: RedisSettings, environ: Mapping[str, str],
                     extra: Mapping[str, list[ApiKey]] | None = None) -> list[KeyState]:
    redis = make_redis(redis_settings)
    try:
        pools = key_pools(catalog, redis, KeySpace(redis_settings.key_prefix), environ, extra)
        return [state for pool in pools.values() for state in await pool.states()]
    finally:
        await redis.aclose()


async def enable_key(catalog: ProvidersFile, redis_settings: RedisSettings, environ: Mapping[str, str],
                     provider: str, key_id: str, extra: Mapping[str, list[ApiKey]] | None = None) -> bool:
    """Re-enable a disabled key; False when it was not disabled. ``KeyError``: no such provider or key."""
    redis = make_redis(redis_settings)
    try:
        pools = key_pools(catalog, redis, KeySpace(redis_settings.key_prefix), environ, extra)
        if provider not in pools:
            raise KeyError(f"no provider {provider!r} with keys; known: {', '.join(pools) or 'none'}")
        return await pools[provider].enable(key_id)
    finally:
        await redis.aclose()
