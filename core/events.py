"""What a state change announces: which event, to which URL, with which payload.

The store calls this inside the transaction that writes a change (``ImageStore.finalize``,
``GroupLedger.settle``) and queues what it returns (``Outbox.add``); nothing here touches Redis.
A new event type, a new filter rule or a new payload shape has its home here:

- an image announces ``image.completed`` or ``image.failed`` the first time it finishes, and
  ``image.updated`` for every later finished state;
- a group announces ``group.completed`` the first time every image is done, ``group.updated``
  for later changes, and ``group.progress`` at most once per ``group_progress_interval_s`` in
  between;
- an endpoint the notifier disables announces ``endpoint.disabled`` to the org's operations
  webhook (an org setting), with the endpoint's health;
- the request's ``webhookEvents`` filters which of these are sent;
- the payload is the full record, or (over the size cap) a thin one with ids, sequence and the
  URL to fetch the rest, so a receiver's 413 never loses an update.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from core.keys import org_hash
from core.schemas import EndpointHealth, EventType, GroupRecord, ImageRecord, ImageStatus, WebhookPayload, utcnow
from core.settings import Settings
from core.tokens import new_id

SUMMARY_LIMIT = 2_000  # beyond this many images a group payload goes out thin anyway
THIN_FIELDS = ("id", "object", "status", "sequence", "counts")


@dataclass(frozen=True)
class Announcement:
    """One webhook to queue, as decided here; ``Outbox.add`` writes it as a delivery."""

    org: str
    url: str
    event: EventType
    resource_id: str
    sequence: int
    body: str  # the payload as it will be signed and sent
    at: datetime  # the payload's timestamp


@dataclass(frozen=True)
class GroupMarks:
    """What a group last announced (stored with the group): the sequence announced, whether
    ``group.completed`` went out, and when the last ``group.progress`` did (Unix seconds)."""

    notified_seq: int = 0
    completed_sent: bool = False
    progress_at: float = 0.0


@dataclass(frozen=True)
class GroupDue:
    """The event a group owes, and the marks to store with it in the same transaction."""

    event: EventType
    marks: GroupMarks


def image_event(record: ImageRecord, notified_seq: int) -> EventType | None:
    """The event a finished image announces; ``None`` while it runs or once this state went out."""
    if not record.status.is_terminal or record.sequence == notified_seq:
        return None
    if notified_seq > 0:
        return EventType.IMAGE_UPDATED
    if record.status is ImageStatus.FAILED:
        return EventType.IMAGE_FAILED
    return EventType.IMAGE_COMPLETED


def group_event(record: GroupRecord, marks: GroupMarks, progress_interval_s: float, now: float) -> GroupDue | None:
    """The event a group owes for its current state, if any (progress is throttled)."""
    if record.sequence == marks.notified_seq:
        return None
    if record.status.is_terminal:
        event = EventType.GROUP_UPDATED if marks.completed_sent else EventType.GROUP_COMPLETED
        return GroupDue(event, replace(marks, notified_seq=record.sequence, completed_sent=True))
    if now - marks.progress_at < progress_interval_s:
        return None
    return GroupDue(EventType.GROUP_PROGRESS, replace(marks, notified_seq=record.sequence, progress_at=now))


def wants_summaries(event: EventType, record: GroupRecord) -> bool:
    """Whether a group payload carries per-image summaries (progress never does; very large
    groups go out thin anyway, so their summaries are not read)."""
    return event is not EventType.GROUP_PROGRESS and record.counts.total <= SUMMARY_LIMIT


def thin(data: dict[str, Any]) -> dict[str, Any]:
    """Ids, sequence and where to fetch the rest: what goes out instead of a payload over the cap."""
    kept = {key: data[key] for key in THIN_FIELDS if key in data}
    return {**kept, "thin": True, "href": f"/v1/{data.get('object', 'image')}s/{data.get('id')}"}


def payload(event: EventType, data: dict[str, Any], at: datetime, cap_bytes: int) -> str:
    """The webhook body: ``{type, timestamp, data}`` with the full ``data``, or thin over the cap."""
    body = WebhookPayload(type=event, timestamp=at, data=data).to_json()
    if len(body) > cap_bytes:
        body = WebhookPayload(type=event, timestamp=at, data=thin(data)).to_json()
    return body


class Events:
    """The announcement rules bound to the settings they depend on (payload cap, progress pace)."""

    def __init__(self, payload_cap_bytes: int = 256 * 1024, progress_interval_s: float = 5.0) -> None:
        self.payload_cap_bytes = payload_cap_bytes
        self.progress_interval_s = progress_interval_s

    @classmethod
    def from_settings(cls, settings: Settings) -> Events:
        return cls(settings.webhook_payload_cap_bytes, settings.group_progress_interval_s)

    def group_due(self, record: GroupRecord, marks: GroupMarks, now: float) -> GroupDue | None:
        return group_event(record, marks, self.progress_interval_s, now)

    def announce(self, org: str, record: ImageRecord | GroupRecord, event: EventType) -> Announcement | None:
        """The record's webhook for ``event``; ``None`` without a webhook URL or when the request's
        ``webhookEvents`` leave ``event`` out."""
        if not record.webhook_url or (record.webhook_events is not None and event not in record.webhook_events):
            return None
        return self.announcement(
            org, record.webhook_url, event, record.id, record.sequence, record.model_dump(mode="json", by_alias=True)
        )

    def test_event(self, org: str, url: str) -> Announcement:
        """A ``webhook.test`` event to ``url`` (``POST /v1/webhooks/test``)."""
        test_id = new_id("tst", org_hash(org))
        data = {"id": test_id, "object": "test", "sequence": 1, "message": "Sightwire test event"}
        return self.announcement(org, url, EventType.TEST, test_id, 1, data)

    def endpoint_disabled(self, org: str, operations_url: str, health: EndpointHealth) -> Announcement:
        """``endpoint.disabled`` to the org's operations webhook: which endpoint, why (its health)."""
        at = health.disabled_at or utcnow()
        data = {"object": "endpoint", **health.model_dump(mode="json", by_alias=True)}
        return self.announcement(org, operations_url, EventType.ENDPOINT_DISABLED, health.id or health.url,
                                 int(at.timestamp() * 1000), data)

    def announcement(
        self, org: str, url: str, event: EventType, resource_id: str, sequence: int, data: dict[str, Any]
    ) -> Announcement:
        """``data`` as ``event`` to ``url``, now: the payload built and thinned over the cap."""
        at = utcnow()
        body = payload(event, data, at, self.payload_cap_bytes)
        return Announcement(org, url, event, resource_id, sequence, body, at)
