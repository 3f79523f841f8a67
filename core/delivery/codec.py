"""How deliveries and endpoints are laid out in their Redis hashes, and read back.

A delivery record is a hash, so its mutable fields change without rewriting the body; times in
it are Unix seconds, and an unset value is an empty string (the scripts write them too).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from core.schemas import Delivery, EndpointHealth, EndpointState

_TIME_FIELDS = ("created_at", "next_attempt_at", "delivered_at")
_OPTIONAL_FIELDS = ("last_status_code", "last_error", "superseded_by", "endpoint_id")


def _moment(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def _int(value: str | None) -> int:
    return int(float(value)) if value else 0


def delivery_fields(delivery: Delivery) -> tuple[str, ...]:
    """A new delivery as flat hash field/value pairs (the fields a new delivery has; the scripts
    add the rest)."""
    values: dict[str, Any] = {
        "id": delivery.id,
        "webhook_id": delivery.webhook_id,
        "org_id": delivery.org_id,
        "url": delivery.url,
        "event_type": delivery.event_type.value,
        "resource_id": delivery.resource_id,
        "sequence": delivery.sequence,
        "body": delivery.body,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "created_at": delivery.created_at.timestamp(),
        "next_attempt_at": delivery.next_attempt_at.timestamp() if delivery.next_attempt_at else "",
        "endpoint_id": delivery.endpoint_id or "",
    }
    return tuple(item for key, value in values.items() for item in (key, str(value)))


def delivery_from_hash(raw: dict[bytes, bytes] | bytes) -> Delivery | None:
    """A delivery from its hash: ``HGETALL``, or the JSON object a script returns."""
    if not raw:
        return None
    if isinstance(raw, bytes):
        fields: dict[str, Any] = json.loads(raw)
    else:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
    for key in _TIME_FIELDS:
        fields[key] = _moment(fields.get(key))
    for key in _OPTIONAL_FIELDS:
        if not fields.get(key):
            fields[key] = None
    return Delivery.model_validate(fields)


def health_from_hash(eid: str, raw: dict[bytes, bytes], pending: int) -> EndpointHealth:
    """An endpoint's health from its hash and how many deliveries it has pending."""
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    state = EndpointState(fields.get("state") or EndpointState.CLOSED)
    return EndpointHealth(
        id=eid,
        org_id=fields.get("org"),
        url=fields.get("url", ""),
        state=state,
        consecutive_failures=_int(fields.get("consecutive_failures")),
        failing_since=_moment(fields.get("failing_since")),
        open_until=_moment(fields.get("open_until")) if state is EndpointState.OPEN else None,
        slowed_until=_moment(fields.get("slow_until")),
        last_success_at=_moment(fields.get("last_success_at")),
        last_failure_at=_moment(fields.get("last_failure_at")),
        last_status_code=_int(fields.get("last_status_code")) or None,
        last_error=fields.get("last_error") or None,
        disabled_at=_moment(fields.get("disabled_at")),
        disabled_reason=fields.get("disabled_reason") or None,
        held=pending if state is not EndpointState.CLOSED else 0,
        pending=pending,
        delivered=_int(fields.get("delivered")),
        failed=_int(fields.get("failed")),
    )
