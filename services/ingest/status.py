"""What ingest tells operators: readiness per dependency and the pipeline's state (``/v1/status``).

Queue depth per path, the route split, the cache hit rate, every provider's keys and circuit
breaker, and the month's budget (per tenant too); each read bounded by ``probe_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.errors import KafkaError

from services.common.budget import format_usd
from services.common.contracts import Path, utcnow
from services.common.lag import group_lag
from services.common.topics import TopicKey
from services.ingest.deps import IngestDeps, ProviderHandle
from services.ingest.errors import Unavailable, describe

log = logging.getLogger(__name__)


async def readiness(deps: IngestDeps) -> dict[str, str]:
    """'ok' or the reason, per dependency, each bounded by ``probe_timeout_s``."""
    timeout = deps.settings.probe_timeout_s

    async def kafka() -> str:
        cluster = await asyncio.wait_for(deps.admin.describe_cluster(), timeout)
        return "ok" if cluster.get("brokers") else "no brokers in the cluster metadata"

    async def redis() -> str:
        return "ok" if await asyncio.wait_for(deps.redis.ping(), timeout) else "PING was not answered"

    names = ("kafka", "redis")
    results = await asyncio.gather(kafka(), redis(), return_exceptions=True)
    # Only the error's type: /readyz needs no key, and messages name internal hosts.
    return {name: describe(result, detail=False) for name, result in zip(names, results, strict=True)}


async def pipeline_status(deps: IngestDeps) -> dict[str, Any]:
    """Queue depth per path, the route split, the cache hit rate, providers' keys and breakers, the budget."""

    async def depth(path: Path, key: TopicKey) -> dict[str, Any]:
        topic, group = deps.topics.name(key), deps.groups.generator(path)
        lag = await group_lag(deps.admin, deps.offsets, topic, group)
        return {"topic": topic, "group_id": group, "depth": sum(lag.values()), "partitions": lag}

    try:
        primary, fallback = await asyncio.wait_for(
            asyncio.gather(depth("primary", "generation.primary"), depth("fallback", "generation.fallback")),
            deps.settings.probe_timeout_s)
    except (TimeoutError, KafkaError) as exc:
        log.warning("queue depth unavailable: %s", describe(exc))
        raise Unavailable("kafka", "Kafka did not report queue depth "
                                   f"({describe(exc, detail=False)}); retry shortly") from exc
    routes = await deps.routes.counts()
    routed = routes.get("primary", 0) + routes.get("fallback", 0)
    cache = await deps.cache.stats()
    hits, lookups = cache.get("hit_local", 0) + cache.get("hit_redis", 0), sum(cache.values())
    budget = await deps.budget.snapshot()
    tenants = await deps.budget.tenant_spend()
    return {
        "queues": {"primary": primary, "fallback": fallback},
        "routes": {"primary": routes.get("primary", 0), "fallback": routes.get("fallback", 0),
                   "fallback_share": routes.get("fallback", 0) / routed if routed else None},
        "cache": {"hit_local": cache.get("hit_local", 0), "hit_redis": cache.get("hit_redis", 0),
                  "miss": cache.get("miss", 0), "hit_rate": hits / lookups if lookups else None},
        "providers": [await _provider_status(provider) for provider in deps.providers],
        "budget": {"month": budget.month, "cap": format_usd(budget.cap_micros),
                   "spent": format_usd(budget.spent_micros), "reserved": format_usd(budget.reserved_micros),
                   "remaining": format_usd(budget.remaining_micros),
                   "tenants": [spend.as_dict() for spend in tenants.values()]},
        "measured_at": utcnow(),
    }


async def _provider_status(provider: ProviderHandle) -> dict[str, Any]:
    breaker = await provider.breaker.state()
    states = await provider.keys.states() if provider.keys is not None else []
    return {
        "name": provider.name, "type": provider.type, "paths": list(provider.paths),
        "breaker": {"state": breaker.state, "consecutive_failures": breaker.consecutive_failures,
                    "down_until": breaker.down_until},
        # Field by field, so nothing a KeyState may gain later reaches the response unreviewed.
        "keys": [{"key_id": key.key_id, "masked": key.masked, "state": key.state,
                  "cooldown_until": key.cooldown_until, "cooldown_reason": key.cooldown_reason,
                  "disabled_reason": key.disabled_reason, "successes": key.successes, "failures": key.failures}
                 for key in states],
    }
