"""Request and response bodies of the ingest API.

The request body is composed from the contract's own fields (``ImageSpec`` and
``GenerationRequested``): same types, limits and descriptions, so the API and the Kafka
contract cannot drift apart. The contract's cross-field checks (``reference_image`` scheme,
``metadata`` size) run when the handler builds the event; ``contract_errors`` turns what they
reject into FastAPI's 422 shape, so clients see one error format.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from services.common.contracts import (
    ComparisonRequested,
    ComparisonResult,
    GenerationRequested,
    ImageSpec,
    Priority,
    WebhookEvent,
)
from services.common.jobs import JobStatus, JobView
from services.ingest.validation import EXCERPT_CHARS, problems

_SPEC_FIELDS = ("prompt", "negative_prompt", "width", "height", "seed", "style")


def _contract_field(model: type[BaseModel], name: str) -> Any:
    """A copy of the contract's definition of ``name``: constraints, default, description, examples."""
    return copy.deepcopy(model.model_fields[name])


# The characters pydantic's ``strip_whitespace`` removes (Unicode White_Space), spelled out so a
# schema's pattern means the same to every regex engine: "has one other character" is what the
# contract's "at least one character once stripped" asks.
_WHITE_SPACE = r"\t\n\x0b\x0c\r\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_HAS_TEXT = f"[^{_WHITE_SPACE}]"

# Numbers are strict: a JSON number, never a string ("512" is a 422) or a boolean, never NaN or
# Infinity. 512.0 is an integer, as JSON Schema counts them.
_STRICT = ("Numbers are strict: JSON numbers only (\"512\" and true are refused, never converted), finite "
           "(NaN and Infinity are refused); an integer may be written 512 or 512.0, as JSON Schema counts them.")
_NUMBER_FIELDS = ("width", "height", "seed", "deadline_s")

#: A 1×1 PNG, small enough for the documented examples to be posted as they are.
EXAMPLE_IMAGE = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ"
                 "/pLvAAAAAElFTkSuQmCC")


def _described(model: type[BaseModel], name: str) -> Any:
    """The contract's description and examples of ``name``, for a field whose constraints the API spells out."""
    contract = model.model_fields[name]
    return Field(contract.default, description=contract.description, examples=contract.examples)


# Lengths are counted as sent (the contract strips white space after), so the schema says exactly
# what is accepted.
PromptText = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=_HAS_TEXT)]
NegativePromptText = Annotated[str, StringConstraints(max_length=2000)]
StyleText = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_HAS_TEXT)]
ReferenceImage = Annotated[str, StringConstraints(pattern=r"^(data:image/|https://)", max_length=14_000_000)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class GenerationRequestBody(BaseModel):
    """What a game backend asks for. Unknown fields are rejected (a misspelt field is a 422, not ignored)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        title="Generation request",
        json_schema_extra={"description": _STRICT, "examples": [
            {
                "prompt": "flaming obsidian greatsword, game icon",
                "negative_prompt": "blurry, text, watermark",
                "width": 512, "height": 512, "seed": 42, "style": "painterly",
                "priority": "standard", "metadata": {"item_id": "sword-017"},
            },
            {"prompt": "frost crystal longbow", "deadline_s": 30, "reference_image": EXAMPLE_IMAGE},
        ]},
    )

    prompt: PromptText = _described(ImageSpec, "prompt")
    negative_prompt: NegativePromptText | None = _described(ImageSpec, "negative_prompt")
    width: int = _contract_field(ImageSpec, "width")
    height: int = _contract_field(ImageSpec, "height")
    seed: int | None = _contract_field(ImageSpec, "seed")
    style: StyleText | None = _described(ImageSpec, "style")
    priority: Priority = _contract_field(GenerationRequested, "priority")
    deadline_s: float | None = _contract_field(GenerationRequested, "deadline_s")
    reference_image: ReferenceImage | None = _contract_field(GenerationRequested, "reference_image")
    metadata: Annotated[dict[MetadataKey, MetadataValue], Field(max_length=32)] = _contract_field(
        GenerationRequested, "metadata")
    webhook_url: str | None = _contract_field(GenerationRequested, "webhook_url")
    webhook_events: tuple[WebhookEvent, ...] | None = _contract_field(GenerationRequested, "webhook_events")

    @field_validator(*_NUMBER_FIELDS, mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: object) -> object:
        if isinstance(value, str | bool):
            raise PydanticCustomError("number_type", "Input should be a JSON number, not {kind}",
                                      {"kind": "a string" if isinstance(value, str) else "a boolean"})
        return value

    def spec_fields(self) -> dict[str, Any]:
        return self.model_dump(include=set(_SPEC_FIELDS))

    def job_fields(self) -> dict[str, Any]:
        """Every field except the spec's: priority, deadline, reference image, metadata."""
        return self.model_dump(exclude=set(_SPEC_FIELDS))

    def fingerprint(self) -> str:
        """SHA-256 of the canonical body (defaults filled in), to tell a retry from a reused Idempotency-Key."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


class ComparisonRequestBody(BaseModel):
    """Score a generated image against the image that was wanted. Unknown fields are rejected."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, title="Comparison request",
        json_schema_extra={"examples": [{
            "target_image": EXAMPLE_IMAGE,
            "generated_image": EXAMPLE_IMAGE,
            "original_prompt": "flaming obsidian greatsword, game icon",
        }]},
    )

    target_image: str = Field(
        min_length=1, max_length=14_000_000,
        description="The image that was wanted: a data:image/(png|jpeg|webp);base64 URL (≤ 10 MB, ≤ 4096×4096) "
                    "or an https URL. Over 14,000,000 characters: 413.")
    generated_image: str = Field(
        min_length=1, max_length=14_000_000,
        description="The image to score: a data: URL, an https URL, or the id of a completed generation job. "
                    "Over 14,000,000 characters: 413.")
    original_prompt: PromptText = _described(ComparisonRequested, "original_prompt")


class ComparisonView(BaseModel):
    """A comparison: its status and, once it ended, the result or the error."""

    comparison_id: str
    status: JobStatus = Field(description="'queued' until the comparer answers; then 'completed' or 'failed'.")
    cached: bool = Field(False, description="True when an earlier comparison of the same images and prompt answered.")
    result: ComparisonResult | None = Field(
        None, description="Score 0–100, quality band and colour, differences, prompt improvements, method, provider.")
    error: dict[str, Any] | None = Field(None, description="Why the comparison failed (code, message, retryable).")
    generation_job_id: str | None = Field(None, description="The generation that asked for it, if one did.")
    created_at: datetime | None = None
    updated_at: datetime | None = None
    status_url: str


def contract_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """A ``GenerationRequested`` validation error in the API's 422 shape, located in the request.

    The input is left out: it may be a 14 MB data URL, and echoing it helps nobody.
    """
    located: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc: tuple[str | int, ...] = tuple(error["loc"])
        if loc[:1] == ("spec",):
            loc = ("body", *loc[1:])
        elif loc[:1] == ("idempotency_key",):
            loc = ("header", "Idempotency-Key", *loc[1:])
        else:
            loc = ("body", *loc)
        located.append({**error, "loc": loc})
    return problems(located)


# ------------------------------------------------------------------------------------- responses


class Accepted(BaseModel):
    """The job is queued (or, for a repeated Idempotency-Key, still on its way). Follow the URLs."""

    job_id: str = Field(examples=["7f3c2a9e5b1d4c6fa0e8b2d4c6f8a0e2"])
    status: JobStatus = Field(description="The job's status now; 'queued' for a new job.")
    status_url: str = Field(examples=["/v1/generations/7f3c2a9e5b1d4c6fa0e8b2d4c6f8a0e2"])
    events_url: str = Field(description="Server-sent events: every status change, until the job ends.",
                            examples=["/v1/generations/7f3c2a9e5b1d4c6fa0e8b2d4c6f8a0e2/events"])
    idempotent_replay: bool = Field(False, description="True when an earlier request with this Idempotency-Key "
                                                       "made the job.")


class GenerationResult(BaseModel):
    """A job that has already ended: served from the result cache, or an Idempotency-Key replay of a finished job."""

    job_id: str
    status: Literal["completed", "failed", "canceled"]
    cached: bool = Field(False, description="True when the image came from the result cache (no generation ran).")
    url: str | None = Field(None, description="Public URL of the image.")
    sha256: str | None = None
    content_type: str | None = None
    size_bytes: int | None = None
    provider: str | None = None
    deterministic: bool | None = None
    placeholder: bool | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    error: dict[str, Any] | None = Field(None, description="Why the job failed (code, message, retryable).")
    status_url: str
    events_url: str
    idempotent_replay: bool = False


class ErrorDetail(BaseModel):
    """One problem with a request: where (``loc``), what (``type``), why (``msg``), never the whole input."""

    type: str = Field(examples=["string_too_long"])
    loc: list[str | int] = Field(description="Where: body, header, query or path, then the field.",
                                 examples=[["body", "prompt"]])
    msg: str = Field(max_length=301, examples=["String should have at most 2000 characters"])
    ctx: dict[str, str] | None = Field(None, description="The limit that was broken, e.g. max_length.")
    input: str | None = Field(None, max_length=EXCERPT_CHARS + 1,
                              description=f"At most {EXCERPT_CHARS} characters of what was sent, escaped.")


class ValidationErrorBody(BaseModel):
    detail: list[ErrorDetail]


class MessageBody(BaseModel):
    """An error with one message saying what to do."""

    detail: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str] = Field(description="Per dependency: 'ok', or why it is not.",
                                   examples=[{"kafka": "ok", "redis": "ok"}])


class QueueDepth(BaseModel):
    topic: str
    group_id: str
    depth: int = Field(description="Messages waiting for this path's generators (sum of partition lag).")
    partitions: dict[int, int]


class RouteSplit(BaseModel):
    primary: int = 0
    fallback: int = 0
    fallback_share: float | None = Field(None, description="fallback / (primary + fallback); None before any route.")


class CacheStats(BaseModel):
    hit_local: int = 0
    hit_redis: int = 0
    miss: int = 0
    hit_rate: float | None = Field(None, description="Hits / lookups; None before any lookup.")


class ProviderKeyStatus(BaseModel):
    """One API key of a provider, as every replica shares it. Never the secret: a fingerprint and a mask."""

    key_id: str = Field(description="A fingerprint of the key (provider:sha256 prefix); names it in "
                                    "`forgeline keys enable`.", examples=["openai:3f9a1c2e"])
    masked: str = Field(description="A few characters of the key, enough to tell keys apart.", examples=["sk-…9f2a"])
    state: Literal["healthy", "cooling_down", "disabled"]
    cooldown_until: datetime | None = Field(None, description="While cooling down: when the key is used again.")
    cooldown_reason: str | None = None
    disabled_reason: str | None = Field(None, description="Why the key was disabled (e.g. the provider refused it).")
    successes: int = 0
    failures: int = 0


class BreakerStatus(BaseModel):
    """A provider's circuit breaker: open, no calls go to it until ``down_until``."""

    state: Literal["closed", "open", "half_open"] = Field(
        description="half_open: the cooldown is over and the next call is a trial.")
    consecutive_failures: int
    down_until: datetime | None = None


class ProviderStatus(BaseModel):
    """One provider of the generators' providers file."""

    name: str
    type: str
    paths: list[Literal["primary", "fallback"]] = Field(description="The paths whose failover list names it.")
    breaker: BreakerStatus
    keys: list[ProviderKeyStatus] = Field(
        default_factory=list, description="Empty for providers without keys, or when their keys are not set here.")


class TenantBudgetStatus(BaseModel):
    """One tenant's paid spend this month, against its own cap (``forgeline tenants set … --budget``)."""

    tenant: str = Field(examples=["studio-a"])
    spent: str = Field(examples=["$0.0046"], description="Settled paid calls.")
    reserved: str = Field(examples=["$0.00"], description="Held by paid calls in flight.")
    cap: str | None = Field(None, examples=["$5.00"], description="Its own monthly cap; null: it draws on the "
                                                                  "deployment's cap only.")
    remaining: str | None = Field(None, examples=["$4.9954"], description="cap - spent - reserved; null without "
                                                                          "a cap of its own.")


class BudgetStatus(BaseModel):
    """The paid path's spend this month (UTC), in US dollars as `format_usd` writes them ("$0.0023")."""

    month: str = Field(examples=["2025-06"])
    cap: str = Field(examples=["$10.00"])
    spent: str = Field(description="Settled paid calls.")
    reserved: str = Field(description="Held by paid calls in flight.")
    remaining: str = Field(description="cap - spent - reserved, never below 0.")
    tenants: list[TenantBudgetStatus] = Field(
        default_factory=list, description="Each tenant that reserved paid spend this month, by name.")


class PipelineStatus(BaseModel):
    """How the pipeline is doing, across every replica."""

    queues: dict[Literal["primary", "fallback"], QueueDepth]
    routes: RouteSplit
    cache: CacheStats
    providers: list[ProviderStatus] = Field(
        default_factory=list, description="Each provider's keys and breaker; empty without a providers file.")
    budget: BudgetStatus
    measured_at: datetime


__all__ = [
    "Accepted",
    "BreakerStatus",
    "BudgetStatus",
    "TenantBudgetStatus",
    "CacheStats",
    "ErrorDetail",
    "GenerationRequestBody",
    "GenerationResult",
    "Health",
    "JobView",
    "MessageBody",
    "PipelineStatus",
    "ProviderKeyStatus",
    "ProviderStatus",
    "QueueDepth",
    "Readiness",
    "RouteSplit",
    "ValidationErrorBody",
    "contract_errors",
]
