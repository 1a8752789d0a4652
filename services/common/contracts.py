"""Every message on every Forgeline topic, as versioned pydantic models.

These models are the contract with game backends: ``forgeline schema`` turns them into JSON
Schema files, so a backend in any language can produce requests and consume results.

Rules:

- Every event carries the envelope: ``schema_version``, ``job_id``, ``tenant``,
  ``created_at`` (when this event was made) and ``trace`` (W3C trace context).
- Models are frozen. Consumers ignore unknown fields, so producers may add optional fields
  without breaking anyone; a breaking change is a new model with a new ``schema_version``,
  and consumers accept both during the migration.
- Values are validated when a model is built, so a producer cannot emit a bad message and a
  consumer learns exactly which field of a bad message is wrong (``ContractError``).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from services.common.errors import Permanent

SCHEMA_VERSION = 1

JobId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$"),
    Field(description="Unique id of a job (8–64 of A–Z a–z 0–9 _ -). Also the Kafka message key.",
          examples=["7f3c2a9e5b1d4c6fa0e8b2d4c6f8a0e2"]),
]
Tenant = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$"),
    Field(description="The game backend (customer) a job belongs to.", examples=["studio-alpha"]),
]
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Dimension = Annotated[int, Field(ge=64, le=2048, multiple_of=8, description="Pixels; 64–2048, a multiple of 8.")]
ImageContentType = Literal["image/png", "image/jpeg", "image/webp"]
Path = Literal["primary", "fallback"]
Priority = Literal["standard", "high"]


def new_job_id() -> str:
    """A fresh job id (a UUID4 in hex)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class ContractError(Permanent, ValueError):
    """A message does not match its contract (permanent: it never will). ``problems`` maps each bad
    field to the reason."""

    def __init__(self, model: str, problems: dict[str, str]) -> None:
        self.model = model
        self.problems = problems
        detail = "; ".join(f"{field}: {reason}" for field, reason in problems.items())
        super().__init__(f"invalid {model}: {detail}")

    @classmethod
    def from_validation_error(cls, model: str, exc: ValidationError) -> ContractError:
        problems: dict[str, str] = {}
        for error in exc.errors(include_url=False, include_input=False):
            field = ".".join(str(part) for part in error["loc"]) or "(message)"
            problems.setdefault(field, error["msg"])
        return cls(model, problems)


class _Model(BaseModel):
    """Base of every contract model: frozen, tolerant of unknown fields, bytes as base64 in JSON."""

    model_config = ConfigDict(
        frozen=True,
        extra="ignore",
        ser_json_bytes="base64",
        val_json_bytes="base64",
        populate_by_name=True,
    )


class TraceContext(_Model):
    """W3C trace context, carried so a job can be followed across services and topics."""

    traceparent: str = Field(pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                             examples=["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"])
    tracestate: str | None = Field(None, max_length=512)

    @classmethod
    def new(cls) -> TraceContext:
        return cls(traceparent=f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01")

    def child(self) -> TraceContext:
        """The same trace, a new span: what a service puts on the events it emits."""
        version, trace_id, _parent, flags = self.traceparent.split("-")
        return TraceContext(traceparent=f"{version}-{trace_id}-{secrets.token_hex(8)}-{flags}",
                            tracestate=self.tracestate)


class Event(_Model):
    """The envelope every topic payload shares."""

    schema_version: Literal[1] = Field(SCHEMA_VERSION, description="Version of this message's schema.")
    job_id: JobId
    tenant: Tenant
    created_at: AwareDatetime = Field(default_factory=utcnow, description="When this event was made (UTC).")
    trace: TraceContext = Field(default_factory=TraceContext.new)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json_bytes(cls, raw: bytes | str) -> Self:
        """Decode and validate; a bad message raises ``ContractError`` naming each bad field."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ContractError.from_validation_error(cls.__name__, exc) from None


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


class StoredImage(_Model):
    """An input image Forgeline keeps in its own bucket (claim check): messages stay small."""

    kind: Literal["stored"] = "stored"
    object_key: str = Field(min_length=1, max_length=1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the bytes, checked on read.")
    content_type: ImageContentType


class ImageSpec(_Model):
    """What to draw. Two jobs with equal specs produce the same image, so the spec is the cache key."""

    prompt: Prompt = Field(description="What to draw, 1–2,000 characters.", examples=["flaming obsidian greatsword"])
    negative_prompt: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] | None = Field(
        None, description="What to avoid.", examples=["blurry, text, watermark"])
    width: Dimension = 512
    height: Dimension = 512
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Fixes the randomness; same seed, same image.")
    style: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] | None = Field(
        None, examples=["pixel-art", "painterly"])

    def cache_key(self) -> str:
        """SHA-256 of the normalised spec: whitespace runs collapsed, optional fields explicit."""
        normalised = {
            "prompt": " ".join(self.prompt.split()),
            "negative_prompt": " ".join(self.negative_prompt.split()) if self.negative_prompt else None,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "style": self.style.lower() if self.style else None,
        }
        canonical = json.dumps(normalised, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


class StageTimes(_Model):
    """When a job passed each stage; each service adds its own, so subscribers see the whole path."""

    accepted_at: AwareDatetime | None = None
    routed_at: AwareDatetime | None = None
    generated_at: AwareDatetime | None = None
    stored_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None

    def with_stage(self, stage: str, at: datetime | None = None) -> StageTimes:
        return self.model_copy(update={f"{stage}_at": at or utcnow()})


class RouteDecision(_Model):
    """Which path the router chose for a job, and why."""

    path: Path
    reason: str = Field(max_length=500, examples=["primary depth 12 < 50"])
    primary_depth: int = Field(ge=0, description="Messages waiting for the primary generators when decided.")
    threshold: int = Field(ge=0, description="The depth threshold in force for this decision.")
    decided_at: AwareDatetime = Field(default_factory=utcnow)
    estimated_wait_s: float | None = Field(
        None, ge=0, description="Primary depth / measured primary rate when decided (may be infinite).")
    service_rate: float | None = Field(None, ge=0, description="Measured primary images per second when decided.")
    deadline_s: float | None = Field(None, gt=0, description="The request's deadline the decision was made against.")
    priority: str | None = Field(None, max_length=32, description="The request's priority when decided.")
    placeholder: bool = Field(False, description="True: the generator renders a free placeholder, no paid call.")


class _GenerationJob(Event):
    """Fields every generation event before the image exists carries."""

    spec: ImageSpec
    priority: Priority = "standard"
    deadline_s: float | None = Field(None, gt=0, le=86_400, description="Seconds after acceptance the caller waits.")
    reference_image: str | StoredImage | None = Field(
        None,
        description="Target image for a comparison after generation: a data: URL or an https URL (ingest "
                    "stores data: URLs in S3 and sends the stored reference instead, keeping messages small).")
    metadata: dict[str, str] = Field(default_factory=dict, description="Echoed back on the result; ≤ 32 entries.")
    timings: StageTimes = Field(default_factory=StageTimes)

    @field_validator("reference_image")
    @classmethod
    def _reference_is_a_url(cls, value: str | StoredImage | None) -> str | StoredImage | None:
        if isinstance(value, str) and len(value) > 14_000_000:
            raise ValueError("at most 14,000,000 characters; give an https URL for larger images")
        if isinstance(value, str) and not value.startswith(("data:image/", "https://")):
            raise ValueError("must be a data:image/... URL or an https:// URL")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_is_small(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 32:
            raise ValueError("at most 32 entries")
        for key, item in value.items():
            if not 1 <= len(key) <= 64 or len(item) > 512:
                raise ValueError(f"entry {key[:64]!r}: keys are 1–64 characters, values at most 512")
        return value


class GenerationRequested(_GenerationJob):
    """A game backend asks for an image. Produced by ingest, or by a backend directly."""


    idempotency_key: str | None = Field(None, min_length=1, max_length=255)
    allow_placeholder: bool = Field(
        False, description="When the paid path is refused and the primary would miss deadline_s, accept a "
                           "procedural placeholder image instead of waiting.")


class GenerationRouted(_GenerationJob):
    """The router's decision, sent to the chosen path's topic."""


    decision: RouteDecision

    @classmethod
    def from_request(cls, request: GenerationRequested, decision: RouteDecision) -> GenerationRouted:
        return cls(**(_job_fields(request) | {"timings": request.timings.with_stage("routed", decision.decided_at)}),
                   decision=decision)


def _job_fields(job: _GenerationJob) -> dict[str, Any]:
    """The fields a job carries from stage to stage (a new event time and span each time)."""
    return {
        "job_id": job.job_id,
        "tenant": job.tenant,
        "trace": job.trace.child(),
        "spec": job.spec,
        "priority": job.priority,
        "deadline_s": job.deadline_s,
        "reference_image": job.reference_image,
        "metadata": job.metadata,
        "timings": job.timings,
    }


class GenerationGenerated(_GenerationJob):
    """A provider returned an image; the bytes travel to storage."""


    decision: RouteDecision
    image: bytes = Field(description="The image bytes (base64 in JSON).", max_length=9 * 1024 * 1024)
    content_type: ImageContentType
    provider: str = Field(min_length=1, max_length=100, examples=["procedural", "replicate"])
    model: str | None = Field(None, max_length=200)
    deterministic: bool = Field(description="True when the same spec always gives the same bytes.")
    placeholder: bool = Field(False, description="True for a stand-in made when no real provider could serve.")
    attempts: int = Field(1, ge=1)

    @classmethod
    def from_routed(cls, routed: GenerationRouted, **image: Any) -> GenerationGenerated:
        """``image``: the ``image``, ``content_type``, ``provider``… fields of this model."""
        return cls(**(_job_fields(routed) | {"timings": routed.timings.with_stage("generated")}),
                   decision=routed.decision, **image)


class GenerationCompleted(Event):
    """The image is published. Subscribers load it from ``url``."""


    url: str = Field(min_length=1, max_length=2048, description="Public (CDN) URL of the image.")
    object_key: str = Field(min_length=1, max_length=1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the image bytes.")
    content_type: ImageContentType
    size_bytes: int = Field(ge=1)
    spec: ImageSpec
    path: Path | None = Field(None, description="The path that generated it; None for a cache hit.")
    provider: str
    deterministic: bool
    placeholder: bool = False
    cached: bool = Field(False, description="True when served from the result cache.")
    metadata: dict[str, str] = Field(default_factory=dict)
    timings: StageTimes = Field(default_factory=StageTimes)
    comparison: ComparisonResult | None = Field(
        None, description="How close the image is to the request's reference_image (when it had one).")
    comparison_error: ErrorInfo | None = Field(
        None, description="Why a requested comparison could not be made; the image is still delivered.")


    @classmethod
    def from_cache(cls, cached: GenerationCompleted, request: GenerationRequested) -> GenerationCompleted:
        """``request`` answered with the image an earlier job made for the same normalised spec."""
        return cls(
            **cached.model_dump(include={"url", "object_key", "sha256", "content_type", "size_bytes", "provider",
                                         "deterministic", "placeholder"}),
            job_id=request.job_id, tenant=request.tenant, trace=request.trace.child(), spec=request.spec,
            path=None, cached=True, metadata=request.metadata, timings=request.timings.with_stage("completed"),
        )


class ErrorInfo(_Model):
    """Why a job failed, in words a caller can act on."""

    code: str = Field(min_length=1, max_length=100, examples=["provider_rejected", "budget_exhausted"])
    message: str = Field(min_length=1, max_length=2000)
    stage: Literal["ingest", "router", "generator", "storage", "comparer"]
    retryable: bool = Field(description="True when the same request may succeed later.")
    provider: str | None = None


#: ``ErrorInfo.code`` of a job its client cancelled; its status reads ``canceled``.
CANCELED = "canceled"


class GenerationFailed(Event):
    """A job ended without an image (``error.code == "canceled"``: its client cancelled it)."""


    error: ErrorInfo
    metadata: dict[str, str] = Field(default_factory=dict)
    timings: StageTimes = Field(default_factory=StageTimes)

    @property
    def canceled(self) -> bool:
        return self.error.code == CANCELED

    @classmethod
    def cancel(cls, job_id: str, tenant: str, reason: str, *, stage: Literal["ingest", "router"]) -> Self:
        """The one terminal event of a cancelled job, on ``generation.failed`` where subscribers already listen."""
        return cls(job_id=job_id, tenant=tenant, error=ErrorInfo(
            code=CANCELED, message=f"canceled: {reason}", stage=stage, retryable=False))


class GenerationCancelRequested(Event):
    """A Kafka-native client asks to cancel its job (key = job id); the router ends it ``canceled``."""

    reason: str = Field("canceled by the client", min_length=1, max_length=500)


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


class DataUrlImage(_Model):
    kind: Literal["data_url"] = "data_url"
    data_url: str = Field(pattern=r"^data:image/(png|jpeg|webp);base64,", max_length=14_000_000)


class HttpsImage(_Model):
    kind: Literal["url"] = "url"
    url: str = Field(pattern=r"^https?://", max_length=2048,
                     description="Fetched with SSRF protection; plain http only where a test allows it.")


class JobImage(_Model):
    kind: Literal["job"] = "job"
    job_id: JobId


ImageRef = Annotated[DataUrlImage | HttpsImage | JobImage | StoredImage, Field(discriminator="kind")]

QualityBand = Literal["Excellent", "Very Good", "Good", "Fair", "Poor", "Very Poor"]

#: (lowest score, band, colour), highest first: seed 000's bands.
QUALITY_BANDS: tuple[tuple[int, QualityBand, str], ...] = (
    (85, "Excellent", "#22c55e"),
    (70, "Very Good", "#65a30d"),
    (55, "Good", "#84cc16"),
    (40, "Fair", "#ca8a04"),
    (25, "Poor", "#ea580c"),
    (0, "Very Poor", "#dc2626"),
)


def quality_band(score: float) -> tuple[QualityBand, str]:
    """The band and its colour for a 0–100 similarity score."""
    for lowest, band, colour in QUALITY_BANDS:
        if score >= lowest:
            return band, colour
    return QUALITY_BANDS[-1][1], QUALITY_BANDS[-1][2]


class ComparisonResult(_Model):
    """How close a generated image is to a target, and how to get closer."""

    score: float = Field(ge=0, le=100)
    band: QualityBand
    band_color: str = Field(pattern=r"^#[0-9a-f]{6}$")
    differences: list[str] = Field(default_factory=list, max_length=20)
    improvements: list[str] = Field(default_factory=list, max_length=20)
    method: Literal["vlm", "perceptual"]
    provider: str | None = Field(None, description="Provider and masked key id, for the VLM method.")
    model: str | None = Field(None, max_length=200, description="The VLM that judged, for the VLM method.")
    fallback_reason: str | None = Field(
        None, max_length=500, description="Set when a VLM was configured but the perceptual comparer answered: why.")
    response_time_ms: float = Field(ge=0)

    @model_validator(mode="after")
    def _band_matches_score(self) -> ComparisonResult:
        if (self.band, self.band_color) != quality_band(self.score):
            raise ValueError(f"band {self.band!r} / {self.band_color} does not match score {self.score}")
        return self


class ComparisonRequested(Event):
    """Score ``generated_image`` against ``target_image``. ``job_id`` is the comparison's id."""


    target_image: ImageRef
    generated_image: ImageRef
    original_prompt: Prompt
    generation_job_id: JobId | None = Field(None, description="The generation that asked for this comparison.")
    completion: GenerationCompleted | None = Field(
        None, description="The generation's result, published by the comparer with the comparison attached.")


class ComparisonCompleted(Event):
    """The score of a comparison."""

    result: ComparisonResult
    generation_job_id: JobId | None = None
    cached: bool = Field(False, description="True when an earlier comparison of the same images and prompt answered.")


class ComparisonFailed(Event):
    """A comparison could not be made (an unreadable image, say)."""

    error: ErrorInfo
    generation_job_id: JobId | None = None


GenerationCompleted.model_rebuild()
ComparisonRequested.model_rebuild()

#: Every event model, for schema export and tests.
EVENT_MODELS: tuple[type[Event], ...] = (
    GenerationRequested,
    GenerationCancelRequested,
    GenerationRouted,
    GenerationGenerated,
    GenerationCompleted,
    GenerationFailed,
    ComparisonRequested,
    ComparisonCompleted,
    ComparisonFailed,
)

E = TypeVar("E", bound=Event)


def decode(model: type[E], raw: bytes | str | None) -> E:
    """Decode a Kafka message value into ``model``; ``ContractError`` says what is wrong."""
    if raw is None:
        raise ContractError(model.__name__, {"(message)": "empty value (a tombstone?)"})
    return model.from_json_bytes(raw)


def json_schema(model: type[Event], *, title: str) -> dict[str, Any]:
    """The JSON Schema of one event, as published for non-Python producers and consumers."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:forgeline:schema:{title}:v{SCHEMA_VERSION}"
    schema["title"] = title
    return schema
