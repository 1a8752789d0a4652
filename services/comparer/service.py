"""Scoring one pair of images: the cache, then the VLM under the failover, then the perceptual comparer.

    cached (target hash, generated hash, prompt, method)?  → that result
    a VLM is configured → Failover.run(VLM judge)          → method "vlm", provider = masked key id
    otherwise, or when every VLM attempt failed            → method "perceptual"
                                                             (fallback_reason says why, when a VLM was configured)

The VLM sits behind the generator's :class:`~services.providers.failover.Failover`, so it gets the
same rules: keys rotate, a 429 cools a key, a 401 disables it, the circuit breaker, backoff, and
the monthly budget for its per-comparison cost. An unparseable answer is permanent for that job
(another attempt would pay again for the same confusion) and falls back at once.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass

from PIL import Image
from prometheus_client import Counter
from redis.asyncio import Redis

from services.common.cache import CacheScope
from services.common.contracts import ComparisonResult, quality_band
from services.common.images import ValidImage
from services.common.redis import KeySpace
from services.comparer.perceptual import PerceptualComparer
from services.providers.failover import Candidate, Failover
from services.providers.port import ProviderError

log = logging.getLogger(__name__)

COMPARISONS = Counter("forgeline_comparisons_total", "Comparisons made, by method and whether cached.",
                      ["method", "cached"])
FALLBACKS = Counter("forgeline_comparison_fallbacks_total", "VLM comparisons answered by the perceptual comparer.",
                    ["code"])

#: Images are scaled to at most this side before they go to a VLM: its cost grows with pixels,
#: and a judgement of likeness needs no more.
VLM_MAX_SIDE = 1024


class ComparisonCache:
    """Results by (scope, target SHA-256, generated SHA-256, normalised prompt, method), in Redis.

    The scope is the result cache's (``CacheScope``): a tenant's own by default, so one tenant is never
    answered with a result another tenant paid a VLM for, and cannot learn from a cached answer that
    someone else compared the same images; ``FORGELINE_CACHE_SCOPE=shared`` shares it, as it shares images.
    """

    def __init__(self, redis: Redis, keys: KeySpace, *, ttl_s: int, scope: CacheScope = CacheScope()) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_s = ttl_s
        self._scope = scope

    def key(self, target: ValidImage, generated: ValidImage, prompt: str, method: str, *,
            tenant: str | None = None) -> str:
        """``tenant``: whose comparison it is (None: a caller with no tenant, in one scope of its own)."""
        scope = self._scope.of(tenant or "")
        canonical = json.dumps([scope, target.sha256, generated.sha256, " ".join(prompt.split()), method])
        return self._keys.key("comparison", hashlib.sha256(canonical.encode()).hexdigest())

    async def get(self, key: str) -> ComparisonResult | None:
        raw = await self._redis.get(key)
        return ComparisonResult.model_validate_json(raw) if raw is not None else None

    async def put(self, key: str, result: ComparisonResult) -> None:
        await self._redis.set(key, result.model_dump_json(), ex=self._ttl_s)


@dataclass
class Scored:
    result: ComparisonResult
    cached: bool


@dataclass
class ComparisonService:
    cache: ComparisonCache
    perceptual: PerceptualComparer
    vlm: Failover | None = None  # None: no VLM configured, perceptual only

    @property
    def preferred_method(self) -> str:
        return "vlm" if self.vlm is not None else "perceptual"

    async def score(self, comparison_id: str, target: ValidImage, generated: ValidImage,
                    prompt: str, *, tenant: str | None = None) -> Scored:
        """``tenant``: whose monthly budget a paid VLM call counts against too (besides the deployment's)."""
        key = self.cache.key(target, generated, prompt, self.preferred_method, tenant=tenant)
        if (cached := await self.cache.get(key)) is not None:
            COMPARISONS.labels(cached.method, "true").inc()
            return Scored(cached, cached=True)

        fallback_reason = None
        if self.vlm is not None:
            try:
                result = await self._judge(comparison_id, target, generated, prompt, tenant)
            except ProviderError as exc:
                FALLBACKS.labels(exc.code).inc()
                fallback_reason = f"VLM unavailable, perceptual comparer used: {exc}"[:500]
                log.warning("comparison %s: %s", comparison_id, fallback_reason)
            else:
                await self.cache.put(key, result)
                COMPARISONS.labels("vlm", "false").inc()
                return Scored(result, cached=False)

        result = await self.perceptual.compare(target.data, generated.data, prompt, tenant=tenant)
        if fallback_reason is not None:
            result = result.model_copy(update={"fallback_reason": fallback_reason})
        else:  # a fallback result is not cached: the next request tries the VLM again
            await self.cache.put(key, result)
        COMPARISONS.labels("perceptual", "false").inc()
        return Scored(result, cached=False)

    async def _judge(self, comparison_id: str, target: ValidImage, generated: ValidImage,
                     prompt: str, tenant: str | None = None) -> ComparisonResult:
        assert self.vlm is not None
        started = time.perf_counter()
        target_url, generated_url = vlm_data_url(target), vlm_data_url(generated)

        async def call(candidate: Candidate, token: str | None):
            return await candidate.adapter.judge(target_url, generated_url, prompt, token)

        attempted = await self.vlm.run(comparison_id, call, tenant=tenant)
        verdict = attempted.value
        band, colour = quality_band(verdict.score)
        return ComparisonResult(
            score=round(verdict.score, 2), band=band, band_color=colour,
            differences=list(verdict.differences), improvements=list(verdict.improvements), method="vlm",
            provider=attempted.key_id or attempted.provider, model=verdict.model,
            response_time_ms=(time.perf_counter() - started) * 1000,
        )


def vlm_data_url(image: ValidImage, max_side: int = VLM_MAX_SIDE) -> str:
    """The image as a data URL for a VLM, scaled down (as PNG) when a side exceeds ``max_side``."""
    if max(image.width, image.height) <= max_side:
        return image.data_url()
    with Image.open(io.BytesIO(image.data)) as opened:
        small = opened.convert("RGBA") if opened.mode in ("P", "LA", "RGBA") else opened.convert("RGB")
    small.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
