"""Wire and storage schemas: what clients send, what the store holds, what webhooks carry.

JSON uses camelCase (``webhookUrl``), Python uses snake_case; every model accepts both.
Requests forbid unknown fields so that a typo is a 422, not a silently ignored option.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from core.deadline import Deadline
from core.wire_json import JsonObject, Text


def utcnow() -> datetime:
    return datetime.now(UTC)


class Wire(BaseModel):
    """Base for every schema: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


class ImageStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self not in (ImageStatus.QUEUED, ImageStatus.PROCESSING)


class ModelStatus(StrEnum):
    QUEUED = "queued"
    COMPLETE = "complete"
    FAILED = "failed"


class EventType(StrEnum):
    IMAGE_COMPLETED = "image.completed"
    IMAGE_FAILED = "image.failed"
    IMAGE_UPDATED = "image.updated"
    GROUP_COMPLETED = "group.completed"
    GROUP_UPDATED = "group.updated"
    GROUP_PROGRESS = "group.progress"
    TEST = "webhook.test"
    ENDPOINT_DISABLED = "endpoint.disabled"  # to the org's operations webhook


class ErrorCode(StrEnum):
    """Per-image and per-model failure codes: stable strings a client can switch on."""

    URL_FORBIDDEN = "url_forbidden"
    FETCH_FAILED = "fetch_failed"
    FETCH_TIMEOUT = "fetch_timeout"
    FETCH_THROTTLED = "fetch_throttled"  # the host's Retry-After reaches past the fetch deadline
    HTTP_ERROR = "http_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    IMAGE_TOO_LARGE = "image_too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    NOT_AN_IMAGE = "not_an_image"
    DECODE_FAILED = "decode_failed"
    MODEL_FAILED = "model_failed"
    MODEL_TIMEOUT = "model_timeout"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # the job failed max_job_attempts times: a dead letter
    DEADLINE = "deadline"  # the submission's deadline passed first: canceled, results so far kept


def _dedupe(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


# Model names in a request: one to 32, duplicates dropped (order kept).
ModelNames = Annotated[list[Text], Field(min_length=1, max_length=32), AfterValidator(_dedupe)]

IMAGE_EVENTS = (EventType.IMAGE_COMPLETED, EventType.IMAGE_FAILED, EventType.IMAGE_UPDATED)
GROUP_EVENTS = (EventType.GROUP_COMPLETED, EventType.GROUP_UPDATED, EventType.GROUP_PROGRESS)


def events_of(resource: str, allowed: tuple[EventType, ...]) -> Any:
    """The type of a submission's ``webhookEvents``: only the event types ``resource`` sends,
    each at most once (so the list is at most as long as ``allowed``). Anything else is a 422
    naming the field: a filter that can never match is a client's mistake, not a no-op."""

    def check(events: list[EventType]) -> list[EventType]:
        foreign = list(dict.fromkeys(e.value for e in events if e not in allowed))
        if foreign:
            raise ValueError(f"{', '.join(foreign)} not sent for {resource}; "
                             f"choose from {', '.join(e.value for e in allowed)}")
        repeated = [e.value for e, n in Counter(events).items() if n > 1]
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once")
        return events

    schema = {"type": "array", "items": {"type": "string", "enum": [e.value for e in allowed]},
              "uniqueItems": True, "maxItems": len(allowed)}
    return Annotated[list[EventType], Field(max_length=len(allowed)), AfterValidator(check), WithJsonSchema(schema)]


ImageEvents = events_of("an image", IMAGE_EVENTS)
GroupEvents = events_of("a group", GROUP_EVENTS)

class ErrorInfo(Wire):
    code: ErrorCode
    message: str


class Submission(Wire):
    """What every submission names: the models, where webhooks go, the client's data; each
    kind adds ``webhook_events``, typed by the events it sends. Length limits beyond these come
    from settings."""

    model_config = ConfigDict(extra="forbid")

    models: ModelNames
    webhook_url: Text | None = None
    metadata: JsonObject | None = None
    external_id: Text | None = Field(default=None, max_length=256)
    deadline: Deadline | None = None


class ImageCreate(Submission):
    """Body of ``POST /v1/images``."""

    url: Text = Field(min_length=1)
    webhook_events: ImageEvents | None = None


class ModelResult(Wire):
    """One model's outcome on one image; ``version`` names the exact model that produced it."""

    status: ModelStatus = ModelStatus.QUEUED
    version: str | None = None
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    completed_at: datetime | None = None


class ImageRecord(Wire):
    """The full current state of an image, as polled and as sent in webhooks."""

    id: str
    object: str = "image"
    status: ImageStatus
    url: str
    models: dict[str, ModelResult]
    error: ErrorInfo | None = None
    metadata: dict[str, Any] | None = None
    external_id: str | None = None
    webhook_url: str | None = None
    webhook_events: list[EventType] | None = None
    width: int | None = None
    height: int | None = None
    group_id: str | None = None
    deadline: datetime | None = None
    sequence: int
    created_at: datetime
    updated_at: datetime


def image_status(
    models: dict[str, ModelResult], error: ErrorInfo | None, *, started: bool, canceled: bool
) -> ImageStatus:
    """Derive an image's status from its models: the single rule every writer applies."""
    if canceled:
        return ImageStatus.CANCELED
    if error is not None:
        return ImageStatus.FAILED
    states = [m.status for m in models.values()]
    if any(s is ModelStatus.QUEUED for s in states):
        started = started or any(s is not ModelStatus.QUEUED for s in states)
        return ImageStatus.PROCESSING if started else ImageStatus.QUEUED
    if all(s is ModelStatus.COMPLETE for s in states):
        return ImageStatus.COMPLETE
    if all(s is ModelStatus.FAILED for s in states):
        return ImageStatus.FAILED
    return ImageStatus.PARTIAL


class ModelsAdd(Wire):
    """Body of ``POST /v1/{images,groups}/{id}/models``: only models not yet run will run."""

    model_config = ConfigDict(extra="forbid")

    models: ModelNames
    deadline: Deadline | None = None


class GroupImage(Wire):
    """One image of a group request."""

    model_config = ConfigDict(extra="forbid")

    url: Text = Field(min_length=1)
    metadata: JsonObject | None = None
    external_id: Text | None = Field(default=None, max_length=256)


class GroupImagesAddFields(Wire):
    """``POST /v1/groups/{id}/images`` without its images, which are read as a stream
    (``serve_app.group_body``)."""

    model_config = ConfigDict(extra="forbid")

    deadline: Deadline | None = None


class GroupImagesAdd(GroupImagesAddFields):
    """Body of ``POST /v1/groups/{id}/images``."""

    images: list[GroupImage] = Field(min_length=1)


class GroupCreateFields(Submission):
    """``POST /v1/groups`` without its images, which are read as a stream (``serve_app.group_body``)."""

    webhook_events: GroupEvents | None = None


class GroupCreate(GroupCreateFields):
    """Body of ``POST /v1/groups``: many images, one set of models, one webhook for the group."""

    images: list[GroupImage] = Field(min_length=1)


class GroupCounts(Wire):
    total: int = 0
    complete: int = 0
    partial: int = 0
    failed: int = 0
    canceled: int = 0
    pending: int = 0


class AggregateBucket(Wire):
    """Scores over the images of one room type (or all): plain and confidence-weighted means."""

    count: int = 0
    condition_count: int = 0
    condition_mean: float | None = None
    condition_weighted_mean: float | None = None
    quality_count: int = 0
    quality_mean: float | None = None
    quality_weighted_mean: float | None = None


class GroupAggregates(Wire):
    overall: AggregateBucket = AggregateBucket()
    by_room: dict[str, AggregateBucket] = Field(default_factory=dict)
    failed_excluded: int = 0


class ImageSummary(Wire):
    id: str
    status: ImageStatus
    url: str
    external_id: str | None = None
    room: str | None = None
    condition: int | None = None
    quality: int | None = None
    error: ErrorCode | None = None


class GroupRecord(Wire):
    """A group's current state, as polled and as sent in group webhooks."""

    id: str
    object: str = "group"
    status: ImageStatus
    models: list[str]
    counts: GroupCounts
    aggregates: GroupAggregates
    metadata: dict[str, Any] | None = None
    external_id: str | None = None
    webhook_url: str | None = None
    webhook_events: list[EventType] | None = None
    bulk: bool = False
    deadline: datetime | None = None
    image_ids: list[str] | None = None
    images: list[ImageSummary] | None = None
    sequence: int
    created_at: datetime
    updated_at: datetime


def group_status(counts: GroupCounts, *, started: bool) -> ImageStatus:
    """A group's status from its counts, by the same rules as an image's from its models: a
    canceled group is ``canceled`` only when every image was canceled, else ``partial``."""
    if counts.pending > 0:
        done = counts.total - counts.pending
        return ImageStatus.PROCESSING if started or done > 0 else ImageStatus.QUEUED
    if counts.total and counts.failed == counts.total:
        return ImageStatus.FAILED
    if counts.total and counts.canceled == counts.total:
        return ImageStatus.CANCELED
    if counts.failed or counts.partial or counts.canceled:
        return ImageStatus.PARTIAL
    return ImageStatus.COMPLETE


class ModelInfo(Wire):
    name: str
    task: str
    version: str
    labels: list[str]
    device: str | None = None
    precision: str | None = None  # fp32 / fp16 / bf16: what the replica computes in


class WebhookPayload(Wire):
    """Standard Webhooks envelope: ``{type, timestamp, data}``."""

    type: EventType
    timestamp: datetime
    data: dict[str, Any]


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # a newer state of the same resource replaced it before it was sent


class DeliveryView(Wire):
    """A delivery as the API shows it: what was sent where, and how far it got (no body, no org)."""

    id: str
    webhook_id: str
    endpoint_id: str | None = None
    url: str
    event_type: EventType
    resource_id: str
    sequence: int
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    created_at: datetime
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    superseded_by: str | None = None


class Delivery(DeliveryView):
    """One webhook message to one endpoint; ``webhook_id`` stays the same on every attempt."""

    org_id: str
    body: str


class Attempt(Wire):
    """One HTTP attempt of a delivery, as shown in the delivery log."""

    at: datetime
    status_code: int | None = None
    latency_ms: float
    error: str | None = None
    succeeded: bool
    retry_after_s: float | None = None  # the endpoint's Retry-After, as sent (before clamping)


class EndpointState(StrEnum):
    """An endpoint's circuit breaker: ``open`` and ``disabled`` hold its deliveries."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"


class DisabledReason(StrEnum):
    """Why an endpoint was disabled: it answered 410, or it failed past the disable window."""

    GONE = "gone"
    FAILING = "failing"


class EndpointHealth(Wire):
    url: str
    consecutive_failures: int = 0
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    id: str | None = None
    org_id: str | None = None
    state: EndpointState = EndpointState.CLOSED
    failing_since: datetime | None = None
    open_until: datetime | None = None
    slowed_until: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    disabled_at: datetime | None = None
    disabled_reason: DisabledReason | None = None
    held: int = 0  # pending deliveries not attempted because the breaker is open or disabled
    pending: int = 0
    delivered: int = 0
    failed: int = 0


class DeliveryLog(DeliveryView):
    """A delivery as the delivery log shows it: its state and (the newest) attempts."""

    attempt_log: list[Attempt] = Field(default_factory=list)
