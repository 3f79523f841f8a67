"""Wire and storage schemas: what clients send, what the store holds, what webhooks carry.

JSON uses camelCase (``webhookUrl``), Python uses snake_case; every model accepts both.
Requests forbid unknown fields so that a typo is a 422, not a silently ignored option.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel


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


class ErrorCode(StrEnum):
    """Per-image and per-model failure codes: stable strings a client can switch on."""

    URL_FORBIDDEN = "url_forbidden"
    FETCH_FAILED = "fetch_failed"
    FETCH_TIMEOUT = "fetch_timeout"
    HTTP_ERROR = "http_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    IMAGE_TOO_LARGE = "image_too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    NOT_AN_IMAGE = "not_an_image"
    DECODE_FAILED = "decode_failed"
    MODEL_FAILED = "model_failed"
    MODEL_TIMEOUT = "model_timeout"


class ErrorInfo(Wire):
    code: ErrorCode
    message: str


class ImageCreate(Wire):
    """Body of ``POST /v1/images``. Length limits beyond these come from settings."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1)
    models: list[str] = Field(min_length=1, max_length=32)
    webhook_url: str | None = None
    webhook_events: list[EventType] | None = None
    metadata: dict[str, Any] | None = None
    external_id: str | None = Field(default=None, max_length=256)

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: list[str]) -> list[str]:
        return list(dict.fromkeys(models))


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


class ModelInfo(Wire):
    name: str
    task: str
    version: str
    labels: list[str]
    device: str | None = None


class WebhookPayload(Wire):
    """Standard Webhooks envelope: ``{type, timestamp, data}``."""

    type: EventType
    timestamp: datetime
    data: dict[str, Any]


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Delivery(Wire):
    """One webhook message to one endpoint; ``webhook_id`` stays the same on every attempt."""

    id: str
    webhook_id: str
    org_id: str
    url: str
    event_type: EventType
    resource_id: str
    sequence: int
    body: str
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    created_at: datetime
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None


class Attempt(Wire):
    """One HTTP attempt of a delivery, as shown in the delivery log."""

    at: datetime
    status_code: int | None = None
    latency_ms: float
    error: str | None = None
    succeeded: bool


class EndpointHealth(Wire):
    url: str
    consecutive_failures: int = 0
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
