"""Which providers serve each path: one YAML file, keys from the environment or secret files.

    # providers.yaml (FORGELINE_GENERATOR_PROVIDERS_FILE)
    primary:
      - {name: hf-space-a, type: gradio, keys_env: FORGELINE_KEYS_HF, options: {space: owner/sdxl-a}}
      - {name: hf-space-b, type: gradio, keys_env: FORGELINE_KEYS_HF, options: {space: owner/sdxl-b}}
    fallback:
      - {name: replicate, type: replicate, cost_usd: 0.0023, keys_env: FORGELINE_KEYS_REPLICATE,
         options: {model: black-forest-labs/flux-schnell}}
      - {name: siliconflow, type: siliconflow, cost_usd: 0.0014, keys_file: /run/secrets/siliconflow}

Without a file, both paths use the procedural provider; ``type: instant`` answers at once with
pre-rendered icons (for benchmarks, ``services.providers.instant``). ``options`` are the adapter's config
fields (``services.providers``); errors name the entry and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from redis.asyncio import Redis

from services.common.breaker import RedisCircuitBreaker
from services.common.budget import usd
from services.common.keypool import ApiKey, RedisKeyPool, keys_from_env, keys_from_file
from services.common.redis import KeySpace
from services.providers import (
    CloudflareConfig,
    CloudflareImageProvider,
    GradioConfig,
    GradioSpaceProvider,
    OpenAIImagesConfig,
    OpenAIImagesProvider,
    ReplicateConfig,
    ReplicateProvider,
    SiliconFlowConfig,
    SiliconFlowImageProvider,
)
from services.providers.failover import Candidate, HttpImageProvider
from services.providers.instant import InstantProvider
from services.providers.procedural import ProceduralProvider

ProviderType = Literal["procedural", "instant", "gradio", "replicate", "siliconflow", "cloudflare", "openai"]

_ADAPTERS: dict[str, tuple[type[BaseModel], type]] = {
    "gradio": (GradioConfig, GradioSpaceProvider),
    "replicate": (ReplicateConfig, ReplicateProvider),
    "siliconflow": (SiliconFlowConfig, SiliconFlowImageProvider),
    "cloudflare": (CloudflareConfig, CloudflareImageProvider),
    "openai": (OpenAIImagesConfig, OpenAIImagesProvider),
}


#: Cost per image when the file does not say: the free kinds cost nothing, Replicate's seed price
#: is $0.0023; the other paid kinds must state theirs (a wrong zero would bypass the budget cap).
DEFAULT_COST_USD: dict[str, Decimal] = {"procedural": Decimal(0), "instant": Decimal(0), "gradio": Decimal(0), "replicate": Decimal("0.0023")}


class CatalogError(ValueError):
    """The providers file is missing, unreadable or invalid; the message says where."""


class ProviderEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="Unique; names metrics, keys and breakers.")
    type: ProviderType
    cost_usd: Decimal | None = Field(
        None, ge=0, description="Per image; above zero, the budget cap applies. Default: see DEFAULT_COST_USD.")
    keys_env: str | None = Field(None, description="Environment variable with the keys (comma or newline separated).")
    keys_file: Path | None = Field(None, description="Secret file with one key per line.")
    timeout_s: float = Field(60.0, gt=0, le=600)
    options: dict[str, Any] = Field(default_factory=dict, description="The adapter's config fields.")

    @model_validator(mode="after")
    def _cost_is_known(self) -> ProviderEntry:
        if self.cost_usd is None and self.type not in DEFAULT_COST_USD:
            raise ValueError(f"{self.type} is a paid provider: give its cost_usd per image")
        return self

    @property
    def cost(self) -> Decimal:
        return self.cost_usd if self.cost_usd is not None else DEFAULT_COST_USD[self.type]


class ProvidersFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    primary: list[ProviderEntry] = Field(min_length=1)
    fallback: list[ProviderEntry] = Field(min_length=1)

    def path(self, path: str) -> list[ProviderEntry]:
        return self.primary if path == "primary" else self.fallback


PROCEDURAL_ONLY = ProvidersFile(primary=[ProviderEntry(name="procedural", type="procedural")],
                                fallback=[ProviderEntry(name="procedural", type="procedural")])


def load_providers_file(path: Path | None) -> ProvidersFile:
    if path is None:
        return PROCEDURAL_ONLY
    try:
        raw = yaml.safe_load(Path(path).read_text())
        return ProvidersFile.model_validate(raw)
    except OSError as exc:
        raise CatalogError(f"cannot read providers file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CatalogError(f"providers file {path} is not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise CatalogError(f"providers file {path}: {problems}") from None


def provider_keys(entry: ProviderEntry, environ: Mapping[str, str]) -> list[ApiKey]:
    """The API keys of one provider entry, from its environment variable and secret file."""
    keys: list[ApiKey] = []
    if entry.keys_env:
        keys += keys_from_env(environ.get(entry.keys_env), entry.name)
    if entry.keys_file:
        keys += keys_from_file(entry.keys_file, entry.name)
    return keys


def build_candidates(
    entries: list[ProviderEntry], *, http: httpx.AsyncClient, redis: Redis, keys: KeySpace,
    environ: Mapping[str, str], simulated_latency_s: float = 0.0,
) -> list[Candidate]:
    """The failover candidates of one path, in the file's order."""
    candidates = []
    for entry in entries:
        adapter: HttpImageProvider
        if entry.type == "procedural":
            adapter = ProceduralProvider(simulated_latency_s=simulated_latency_s)
        elif entry.type == "instant":
            adapter = InstantProvider()
        else:
            config_cls, adapter_cls = _ADAPTERS[entry.type]
            try:
                config = config_cls.model_validate(entry.options | {"timeout_s": entry.timeout_s})
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
                raise CatalogError(f"provider {entry.name!r} options: {problems}") from None
            adapter = adapter_cls(config, http)
        api_keys = provider_keys(entry, environ)
        if entry.type not in ("procedural", "instant", "gradio") and not api_keys:
            raise CatalogError(f"provider {entry.name!r} has no API keys: set {entry.keys_env or 'keys_env'} "
                               f"or keys_file in the providers file")
        candidates.append(Candidate(
            name=entry.name, adapter=adapter,
            breaker=RedisCircuitBreaker(redis, keys, entry.name),
            keys=RedisKeyPool(redis, keys, entry.name, api_keys) if api_keys else None,
            cost_micros=usd(entry.cost), timeout_s=entry.timeout_s + 5,  # the adapter's own deadline fires first
        ))
    return candidates
