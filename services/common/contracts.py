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
- Consumers decode strictly and the published schemas say so: a message the schema accepts is
  one the consumers accept, and the other way round. No ``"42"`` for a number, no ``"true"`` for a
  boolean, times are RFC 3339 with a zone, and every limit is a schema keyword, not a sentence.
  A whole number written as ``256.0`` is the integer 256, as it is to JSON Schema.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, TypeVar

import pybase64
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
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


def _whole_number(value: Any) -> Any:
    """JSON Schema's ``integer`` includes ``256.0``; strict pydantic does not. Follow the schema."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _integer(**limits: Any) -> Any:
    """An integer as JSON Schema means it: ``256`` or ``256.0``, never ``"256"`` or ``true``.

    The limits come before the validator, so they stay schema keywords.
    """
    return Annotated[int, Field(**limits), BeforeValidator(_whole_number)]


Count = _integer(ge=0)
PositiveCount = _integer(ge=1)

#: RFC 3339 date-time with a zone, the only form consumers accept (pydantic alone also takes
#: ``2025-01-31 12:00Z`` or a Unix time in a string, which JSON Schema's ``date-time`` does not).
RFC3339 = (r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
           r"(\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
_RFC3339 = re.compile(RFC3339)


def _rfc3339(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time with a time zone, like 2025-01-31T12:00:00Z")
    return datetime.fromisoformat(value)  # a day the month does not have is refused here


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": RFC3339}),
]

#: Text limits apply to the text as sent (so they are the schema's), then it is stored stripped.
NOT_BLANK = r"\S"


def _stripped_text(min_length: int, max_length: int) -> Any:
    constraints = StringConstraints(min_length=min_length, max_length=max_length,
                                    pattern=NOT_BLANK if min_length else None)
    return Annotated[str, constraints, AfterValidator(str.strip)]


Prompt = _stripped_text(1, 2000)
NegativePrompt = _stripped_text(0, 2000)
Style = _stripped_text(1, 64)
Dimension = _integer(ge=64, le=2048, multiple_of=8, description="Pixels; 64–2048, a multiple of 8.")
Seed = Annotated[int | None, Field(ge=0, le=2**32 - 1), BeforeValidator(_whole_number)]
ImageContentType = Literal["image/png", "image/jpeg", "image/webp"]
Path = Literal["primary", "fallback"]
Priority = Literal["standard", "high"]
#: The job events a webhook may ask for (Replicate's ``webhook_events_filter``): the terminal topics'.
WebhookEvent = Literal["completed", "failed"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("completed", "failed")
WebhookUrl = Annotated[
    str | None,
    Field(None, max_length=2048, pattern=r"^https?://",
          description="Where the job's terminal event is POSTed, signed per Standard Webhooks v1 with the "
                      "tenant's signing secret. https, on a public address.",
          examples=["https://game.example.com/hooks/forgeline"]),
]
WebhookEvents = Annotated[
    tuple[WebhookEvent, ...] | None,
    Field(None, min_length=1, description="Which of the job's events go to webhook_url; all of them when unset.",
          examples=[["completed", "failed"]]),
]


METADATA_MAX_ENTRIES = 32
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512


def _metadata_is_small(value: dict[str, str]) -> dict[str, str]:
    if len(value) > METADATA_MAX_ENTRIES:
        raise ValueError("at most 32 entries")
    for key, item in value.items():
        if not 1 <= len(key) <= METADATA_KEY_MAX or len(item) > METADATA_VALUE_MAX:
            raise ValueError(f"entry {key[:64]!r}: keys are 1–64 characters, values at most 512")
        if _has_lone_surrogate(key):  # values are checked as strings; keys are not
            raise ValueError(f"entry {key[:64]!r}: the key is not valid Unicode (a lone surrogate)")
    return value


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


#: Free-form labels echoed on the result. The check runs as a validator of each model that carries
#: them (so ingest's request body reports it with the contract's other checks); the schema gets its limits.
Metadata = Annotated[
    dict[str, str],
    Field(json_schema_extra={
        "maxProperties": METADATA_MAX_ENTRIES,
        "propertyNames": {"minLength": 1, "maxLength": METADATA_KEY_MAX},
        "additionalProperties": {"type": "string", "maxLength": METADATA_VALUE_MAX},
    }),
]

REFERENCE_URL_MAX = 14_000_000
REFERENCE_URL_SCHEMES = ("data:image/", "https://")
ReferenceUrl = Annotated[str, WithJsonSchema({
    "type": "string", "maxLength": REFERENCE_URL_MAX,
    "pattern": "^(" + "|".join(re.escape(scheme) for scheme in REFERENCE_URL_SCHEMES) + ")"})]


IMAGE_MAX_BYTES = 9 * 1024 * 1024
#: Padded base64 in either alphabet (Forgeline writes the URL-safe one).
BASE64 = r"^([A-Za-z0-9+/_-]{4})*([A-Za-z0-9+/_-]{2}==|[A-Za-z0-9+/_-]{3}=)?$"
_URL_SAFE_TO_STANDARD = str.maketrans("-_", "+/")


def _base64(value: Any, info: ValidationInfo) -> Any:
    """Decode the JSON string ourselves: pydantic would also take unpadded base64, which ``BASE64`` does not."""
    if info.mode != "json" or not isinstance(value, str):
        return value
    return decode_base64(value)


def decode_base64(value: str) -> bytes:
    """``value`` as ``BASE64`` takes it (padded, either alphabet); ValueError naming the fault otherwise.

    pybase64 (SIMD) decodes a 40 KB image in about 10 µs, where binascii's strict mode took 180 µs.
    """
    altchars = b"-_"  # the URL-safe alphabet, which Forgeline writes
    if "+" in value or "/" in value:  # the standard one, or both mixed
        altchars = None
        if "-" in value or "_" in value:
            value = value.translate(_URL_SAFE_TO_STANDARD)
    try:
        return pybase64.b64decode(value, altchars=altchars, validate=True)  # padded, and nothing else
    except ValueError:
        raise ValueError(f"must be padded base64: {_why_not_base64(value)}") from None


def _why_not_base64(value: str) -> str:
    """binascii's reason for refusing ``value``, which names the fault (pybase64 says "Non-base64 digit")."""
    try:
        binascii.a2b_base64(value.translate(_URL_SAFE_TO_STANDARD), strict_mode=True)
    except ValueError as exc:
        return str(exc)
    return "an '=' after a complete group of four"  # "QUJD=": binascii takes it, ``BASE64`` does not


ImageBytes = Annotated[
    bytes,
    BeforeValidator(_base64),
    Field(max_length=IMAGE_MAX_BYTES),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "pattern": BASE64,
                    "maxLength": 4 * ((IMAGE_MAX_BYTES + 2) // 3)}),
]


def new_job_id() -> str:
    """A fresh job id (a UUID4 in hex)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (and "…"), with lone surrogates and control characters escaped:
    safe for a log line, a Kafka header or a JSON response, whatever a hostile input held."""
    head = text[:limit]
    if not head.isprintable():  # escapes grow the text: cut again after escaping
        head = "".join(ch if ch.isprintable() else ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                       for ch in head)
    return head if len(head) <= limit and len(text) <= limit else head[:limit] + "…"


class ContractError(Permanent, ValueError):
    """A message does not match its contract (permanent: it never will). ``problems`` maps each bad
    field to the reason.

    The message stays short whatever the input (it becomes a dead letter's reason header and a
    log line): at most ``MAX_PROBLEMS`` fields, each name and reason cut and escaped.
    """

    MAX_PROBLEMS = 10

    def __init__(self, model: str, problems: dict[str, str]) -> None:
        self.model = model
        self.problems = {printable(field, 80): printable(reason, 200)
                         for field, reason in list(problems.items())[:self.MAX_PROBLEMS]}
        detail = "; ".join(f"{field}: {reason}" for field, reason in self.problems.items())
        more = len(problems) - len(self.problems)
        super().__init__(f"invalid {model}: {detail}" + (f"; and {more} more" if more > 0 else ""))

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
    created_at: Timestamp = Field(default_factory=utcnow, description="When this event was made (UTC).")
    trace: TraceContext = Field(default_factory=TraceContext.new)

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json_bytes(cls, raw: bytes | str) -> Self:
        """Decode and validate; a bad message raises ``ContractError`` naming each bad field."""
        try:
            return cls.model_validate_json(raw, strict=True)
        except ValidationError as exc:
            raise ContractError.from_validation_error(cls.__name__, exc) from None


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _kind_is_required(schema: dict[str, Any]) -> None:
    schema["required"] = ["kind", *schema.get("required", [])]


class _ImageRef(_Model):
    """Base of the image references: ``kind`` tells them apart, so a message must name it (Python
    callers may leave it to the default)."""

    model_config = ConfigDict(json_schema_extra=_kind_is_required)

    @model_validator(mode="before")
    @classmethod
    def _kind_on_the_wire(cls, data: Any, info: ValidationInfo) -> Any:
        if info.mode == "json" and isinstance(data, dict) and "kind" not in data:
            raise ValueError(f"needs \"kind\": {cls.model_fields['kind'].default!r}")
        return data


class StoredImage(_ImageRef):
    """An input image Forgeline keeps in its own bucket (claim check): messages stay small."""

    kind: Literal["stored"] = "stored"
    object_key: str = Field(min_length=1, max_length=1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the bytes, checked on read.")
    content_type: ImageContentType


class ImageSpec(_Model):
    """What to draw. Two jobs with equal specs produce the same image, so the spec is the cache key."""

    prompt: Prompt = Field(description="What to draw, 1–2,000 characters.", examples=["flaming obsidian greatsword"])
    negative_prompt: NegativePrompt | None = Field(
        None, description="What to avoid.", examples=["blurry, text, watermark"])
    width: Dimension = 512
    height: Dimension = 512
    seed: Seed = Field(None, description="Fixes the randomness; same seed, same image.")
    style: Style | None = Field(
        None, examples=["pixel-art", "painterly"])

    def cache_key(self, scope: str | None = None) -> str:
        """SHA-256 of the normalised spec: whitespace runs collapsed, optional fields explicit.

        ``scope``: whose results it may be answered from — the job's tenant by default (``CacheScope.of``
        gives it: one tenant never gets another's image, URL or metadata), None when the deployment
        shares its cache across tenants (the key of a spec alone, as before tenants had a scope).
        """
        normalised = {
            "prompt": " ".join(self.prompt.split()),
            "negative_prompt": " ".join(self.negative_prompt.split()) if self.negative_prompt else None,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "style": self.style.lower() if self.style else None,
        }
        if scope is not None:
            normalised["scope"] = scope
        canonical = json.dumps(normalised, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


class StageTimes(_Model):
    """When a job passed each stage; each service adds its own, so subscribers see the whole path."""

    accepted_at: Timestamp | None = None
    routed_at: Timestamp | None = None
    generated_at: Timestamp | None = None
    stored_at: Timestamp | None = None
    completed_at: Timestamp | None = None

    def with_stage(self, stage: str, at: datetime | None = None) -> StageTimes:
        return self.model_copy(update={f"{stage}_at": at or utcnow()})


class RouteDecision(_Model):
    """Which path the router chose for a job, and why."""

    path: Path
    reason: str = Field(max_length=500, examples=["primary depth 12 < 50"])
    primary_depth: Count = Field(description="Messages waiting for the primary generators when decided.")
    threshold: Count = Field(description="The depth threshold in force for this decision.")
    decided_at: Timestamp = Field(default_factory=utcnow)
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
    reference_image: ReferenceUrl | StoredImage | None = Field(
        None,
        description="Target image for a comparison after generation: a data: URL or an https URL (ingest "
                    "stores data: URLs in S3 and sends the stored reference instead, keeping messages small).")
    metadata: Metadata = Field(default_factory=dict, description="Echoed back on the result; ≤ 32 entries.")
    timings: StageTimes = Field(default_factory=StageTimes)
    webhook_url: WebhookUrl = None
    webhook_events: WebhookEvents = None

    _check_metadata = field_validator("metadata")(_metadata_is_small)

    @field_validator("reference_image")
    @classmethod
    def _reference_is_a_url(cls, value: str | StoredImage | None) -> str | StoredImage | None:
        if isinstance(value, str) and len(value) > REFERENCE_URL_MAX:
            raise ValueError("at most 14,000,000 characters; give an https URL for larger images")
        if isinstance(value, str) and not value.startswith(REFERENCE_URL_SCHEMES):
            raise ValueError("must be a data:image/... URL or an https:// URL")
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
        **webhook_fields(job),
    }


def webhook_fields(job: _GenerationJob | GenerationCompleted | GenerationFailed) -> dict[str, Any]:
    """The job's webhook, carried from the request to its terminal event (where the webhooks service reads it)."""
    return {"webhook_url": job.webhook_url, "webhook_events": job.webhook_events}


class GenerationGenerated(_GenerationJob):
    """A provider returned an image; the bytes travel to storage."""


    decision: RouteDecision
    image: ImageBytes = Field(description="The image bytes (base64 in JSON), at most 9 MiB.")
    content_type: ImageContentType
    provider: str = Field(min_length=1, max_length=100, examples=["procedural", "replicate"])
    model: str | None = Field(None, max_length=200)
    deterministic: bool = Field(description="True when the same spec always gives the same bytes.")
    placeholder: bool = Field(False, description="True for a stand-in made when no real provider could serve.")
    attempts: PositiveCount = 1

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
    size_bytes: PositiveCount
    spec: ImageSpec
    path: Path | None = Field(None, description="The path that generated it; None for a cache hit.")
    provider: str
    deterministic: bool
    placeholder: bool = False
    cached: bool = Field(False, description="True when served from the result cache.")
    coalesced_with: JobId | None = Field(
        None, description="The job whose provider call made this image: an identical request was in flight "
                          "when this one arrived, so both share one call (None: this job made it).")
    metadata: Metadata = Field(default_factory=dict)
    timings: StageTimes = Field(default_factory=StageTimes)
    comparison: ComparisonResult | None = Field(
        None, description="How close the image is to the request's reference_image (when it had one).")
    comparison_error: ErrorInfo | None = Field(
        None, description="Why a requested comparison could not be made; the image is still delivered.")
    webhook_url: WebhookUrl = None
    webhook_events: WebhookEvents = None

    _check_metadata = field_validator("metadata")(_metadata_is_small)


    @classmethod
    def from_cache(cls, cached: GenerationCompleted, request: GenerationRequested) -> GenerationCompleted:
        """``request`` answered with the image an earlier job made for the same normalised spec."""
        return cls(
            **cached.model_dump(include={"url", "object_key", "sha256", "content_type", "size_bytes", "provider",
                                         "deterministic", "placeholder"}),
            job_id=request.job_id, tenant=request.tenant, trace=request.trace.child(), spec=request.spec,
            path=None, cached=True, metadata=request.metadata, timings=request.timings.with_stage("completed"),
            **webhook_fields(request),
        )


    @classmethod
    def from_leader(cls, leader: GenerationCompleted, request: GenerationRequested) -> GenerationCompleted:
        """``request``'s result when it waited on ``leader``, an identical job in flight: the same image."""
        return cls(
            **leader.model_dump(include={"url", "object_key", "sha256", "content_type", "size_bytes", "path",
                                         "provider", "deterministic", "placeholder"}),
            job_id=request.job_id, tenant=request.tenant, trace=request.trace.child(), spec=request.spec,
            coalesced_with=leader.job_id, metadata=request.metadata,
            timings=request.timings.with_stage("completed"), **webhook_fields(request),
        )


class ErrorInfo(_Model):
    """Why a job failed, in words a caller can act on."""

    code: str = Field(min_length=1, max_length=100, examples=["provider_rejected", "budget_exhausted"])
    message: str = Field(min_length=1, max_length=2000)
    stage: Literal["ingest", "router", "generator", "storage", "comparer"]
    retryable: bool = Field(description="True when the same request may succeed later.")
    provider: str | None = None
    retry_after_s: float | None = Field(
        None, ge=0, le=86_400, examples=[2.0],
        description="Seconds after which the same request may succeed (code rate_limited: the tenant's limits).")


#: ``ErrorInfo.code`` of a job its client cancelled; its status reads ``canceled``.
CANCELED = "canceled"
#: ``ErrorInfo.code`` of a request produced straight to Kafka beyond its tenant's limits (see ``retry_after_s``).
RATE_LIMITED = "rate_limited"


class GenerationFailed(Event):
    """A job ended without an image (``error.code == "canceled"``: its client cancelled it)."""


    error: ErrorInfo
    metadata: Metadata = Field(default_factory=dict)
    timings: StageTimes = Field(default_factory=StageTimes)
    webhook_url: WebhookUrl = None
    webhook_events: WebhookEvents = None

    _check_metadata = field_validator("metadata")(_metadata_is_small)

    @property
    def canceled(self) -> bool:
        return self.error.code == CANCELED

    @classmethod
    def from_leader(cls, leader: GenerationFailed, request: GenerationRequested) -> GenerationFailed:
        """``request``'s end when the identical job it waited on failed for good: the same reason."""
        message = f"coalesced with job {leader.job_id}: {leader.error.message}"
        return cls(job_id=request.job_id, tenant=request.tenant, trace=request.trace.child(),
                   metadata=request.metadata, timings=request.timings, **webhook_fields(request),
                   error=leader.error.model_copy(update={"message": message[:2000]}))

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


class DataUrlImage(_ImageRef):
    kind: Literal["data_url"] = "data_url"
    data_url: str = Field(pattern=r"^data:image/(png|jpeg|webp);base64,", max_length=14_000_000)


class HttpsImage(_ImageRef):
    kind: Literal["url"] = "url"
    url: str = Field(pattern=r"^https?://", max_length=2048,
                     description="Fetched with SSRF protection; plain http only where a test allows it.")


class JobImage(_ImageRef):
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


def _band_follows_score(schema: dict[str, Any]) -> None:
    """The score → band rule of ``quality_band`` as schema keywords (``if`` score in range ``then`` band)."""
    rules, upper = [], None
    for lowest, band, colour in QUALITY_BANDS:
        score_range: dict[str, Any] = {"minimum": lowest} | ({"exclusiveMaximum": upper} if upper is not None else {})
        rules.append({"if": {"properties": {"score": score_range}, "required": ["score"]},
                      "then": {"properties": {"band": {"const": band}, "band_color": {"const": colour}}}})
        upper = lowest
    schema["allOf"] = rules


class ComparisonResult(_Model):
    """How close a generated image is to a target, and how to get closer."""

    model_config = ConfigDict(json_schema_extra=_band_follows_score)

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
