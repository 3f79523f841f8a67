"""Typed records of the API. camelCase on the wire, snake_case in Python.

Every record keeps fields it does not know (``model_extra``) and every enum field also accepts an
unknown string, so a newer server never breaks an older client.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

E = TypeVar("E", bound=StrEnum)
# An enum member when the value is known, else the plain string (a newer server's new state).
Lenient = Annotated[E | str, Field(union_mode="left_to_right")]


class Record(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class Status(StrEnum):
    """An image's or a group's status."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELED = "canceled"


UNFINISHED = frozenset({Status.QUEUED, Status.PROCESSING})


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


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class EndpointState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"


class ErrorInfo(Record):
    code: str  # a stable code such as ``fetch_failed`` or ``model_failed``
    message: str


class ModelResult(Record):
    status: Lenient[ModelStatus]
    version: str | None = None
    result: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    completed_at: datetime | None = None


class Resource(Record):
    """What images and groups share: an id, a status, and a ``sequence`` that rises on every change."""

    id: str
    status: Lenient[Status]
    sequence: int
    metadata: dict[str, Any] | None = None
    external_id: str | None = None
    webhook_url: str | None = None
    webhook_events: list[Lenient[EventType]] | None = None
    created_at: datetime
    updated_at: datetime

    @property
    def is_finished(self) -> bool:
        """Nothing more will run unless you add images or models (the server's own rule)."""
        return self.status not in UNFINISHED


class Image(Resource):
    object: str = "image"
    url: str
    models: dict[str, ModelResult]
    error: ErrorInfo | None = None
    width: int | None = None
    height: int | None = None
    group_id: str | None = None
    deadline: datetime | None = None  # when work not done is canceled (error code ``deadline``)


class GroupCounts(Record):
    total: int = 0
    complete: int = 0
    partial: int = 0
    failed: int = 0
    canceled: int = 0
    pending: int = 0


class AggregateBucket(Record):
    count: int = 0
    condition_count: int = 0
    condition_mean: float | None = None
    condition_weighted_mean: float | None = None
    quality_count: int = 0
    quality_mean: float | None = None
    quality_weighted_mean: float | None = None


class GroupAggregates(Record):
    overall: AggregateBucket = Field(default_factory=AggregateBucket)
    by_room: dict[str, AggregateBucket] = Field(default_factory=dict)
    failed_excluded: int = 0


class ImageSummary(Record):
    id: str
    status: Lenient[Status]
    url: str
    external_id: str | None = None
    room: str | None = None
    condition: int | None = None
    quality: int | None = None
    error: str | None = None


class Group(Resource):
    object: str = "group"
    models: list[str]
    counts: GroupCounts
    aggregates: GroupAggregates = Field(default_factory=GroupAggregates)
    bulk: bool = False
    deadline: datetime | None = None
    image_ids: list[str] | None = None
    images: list[ImageSummary] | None = None


class NewImage(Record):
    """One image of ``submit_group`` / ``add_group_images`` (a plain URL string works too)."""

    url: str
    metadata: dict[str, Any] | None = None
    external_id: str | None = None


class Attempt(Record):
    at: datetime
    status_code: int | None = None
    latency_ms: float
    error: str | None = None
    succeeded: bool
    retry_after_s: float | None = None


class Delivery(Record):
    """One webhook message to one endpoint, with every attempt (the delivery log)."""

    id: str
    webhook_id: str
    endpoint_id: str | None = None
    url: str
    event_type: Lenient[EventType]
    resource_id: str
    sequence: int
    status: Lenient[DeliveryStatus]
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    superseded_by: str | None = None
    attempt_log: list[Attempt] = Field(default_factory=list)


class EndpointHealth(Record):
    """An endpoint's circuit breaker and counts; ``released`` is set by ``enable_endpoint``."""

    url: str
    id: str | None = None
    state: Lenient[EndpointState] = EndpointState.CLOSED
    consecutive_failures: int = 0
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    failing_since: datetime | None = None
    open_until: datetime | None = None
    slowed_until: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    held: int = 0
    pending: int = 0
    delivered: int = 0
    failed: int = 0
    released: int | None = None


class SecretInfo(Record):
    secret: str
    created_at: datetime | None = None
    expires_at: datetime | None = None


class WebhookSecret(Record):
    """The ``whsec_`` secret that signs now, and older ones still signing until ``expires_at``."""

    secret: str
    created_at: datetime | None = None
    previous: list[SecretInfo] = Field(default_factory=list)

    @property
    def all(self) -> list[str]:
        """Every secret a receiver should accept right now (pass it to ``verify_webhook``)."""
        return [self.secret, *(p.secret for p in self.previous)]


class ModelInfo(Record):
    name: str
    task: str
    version: str
    labels: list[str] = Field(default_factory=list)
    device: str | None = None
    precision: str | None = None


class WebhookEvent(Record):
    """A verified webhook: ``{type, timestamp, data}`` plus ``id``, its ``webhook-id`` header
    (the same on every retry: deduplicate on it)."""

    id: str
    type: Lenient[EventType]
    timestamp: datetime
    data: dict[str, Any]

    @property
    def resource_id(self) -> str:
        return str(self.data.get("id", ""))

    @property
    def sequence(self) -> int:
        return int(self.data.get("sequence", 0))

    @property
    def thin(self) -> bool:
        """Over the size cap, ``data`` holds only ids, status and ``href``: fetch the record."""
        return bool(self.data.get("thin"))

    def image(self) -> Image:
        return Image.model_validate(self._full("image"))

    def group(self) -> Group:
        return Group.model_validate(self._full("group"))

    def _full(self, kind: str) -> dict[str, Any]:
        if self.data.get("object") != kind:
            raise ValueError(f"{self.type} carries a {self.data.get('object')!r}, not an {kind}")
        if self.thin:
            raise ValueError(f"{self.resource_id} arrived thin: fetch it (get_{kind})")
        return self.data
