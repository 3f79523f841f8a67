"""How image records are laid out in their Redis hash, and read back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from core import aggregates
from core.events import GroupMarks
from core.keys import org_hash
from core.schemas import (
    ErrorInfo,
    EventType,
    GroupCounts,
    GroupRecord,
    ImageRecord,
    ModelResult,
    group_status,
    image_status,
    utcnow,
)
from core.tokens import new_id
from core.wire_json import dumps, stored_json

MODEL_FIELD = "m:"
GROUP_ID_PREFIX = "grp"  # a group id is ``grp_…``, an image id ``img_…``


@dataclass(frozen=True)
class Written:
    """An engine write that was applied: the record's new sequence and every field it set, as
    stored, so a writer that saw the sequence just before holds the whole hash again."""

    seq: int
    fields: dict[str, str]


def result_fields(results: dict[str, ModelResult], size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The fields that store model results and, with the image's ``size``, its started mark."""
    mapping: dict[str, Any] = {MODEL_FIELD + name: result.to_json() for name, result in results.items()}
    if size is not None:
        mapping.update(started="1", width=size[0], height=size[1])
    return mapping


def decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def flat_hash(reply: list[bytes]) -> dict[str, str]:
    """A hash a script returned as HGETALL does inside Lua: field, value, field, value, ..."""
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}


def image_record(image_id: str, fields: dict[str, str]) -> ImageRecord:
    models = {
        name: ModelResult.model_validate_json(fields[MODEL_FIELD + name])
        for name in json.loads(fields["models"])
    }
    error = ErrorInfo.model_validate_json(fields["error"]) if fields.get("error") else None
    status = image_status(
        models, error, started=fields.get("started") == "1", canceled=fields.get("canceled") == "1"
    )
    return ImageRecord(
        id=image_id,
        status=status,
        url=fields["url"],
        models=models,
        error=error,
        metadata=stored_json(fields.get("metadata"), f"image {image_id} metadata"),
        external_id=fields.get("external_id") or None,
        webhook_url=fields.get("webhook_url") or None,
        webhook_events=json.loads(fields.get("webhook_events", "null")),
        width=int(fields["width"]) if fields.get("width") else None,
        height=int(fields["height"]) if fields.get("height") else None,
        group_id=fields.get("group") or None,
        deadline=deadline_of(fields),
        sequence=int(fields["seq"]),
        created_at=datetime.fromisoformat(fields["created_at"]),
        updated_at=datetime.fromisoformat(fields["updated_at"]),
    )


def deadline_of(fields: dict[str, str]) -> datetime | None:
    """The deadline stored in a record's hash (Unix seconds), if it has one."""
    return datetime.fromtimestamp(float(fields["deadline"]), UTC) if fields.get("deadline") else None


def deadline_field(deadline: datetime | None) -> str:
    return repr(deadline.timestamp()) if deadline is not None else ""


def new_image_fields(
    org: str,
    url: str,
    models: list[str],
    *,
    metadata: dict[str, Any] | None = None,
    external_id: str | None = None,
    webhook_url: str | None = None,
    webhook_events: list[EventType] | None = None,
    group_id: str | None = None,
    deadline: datetime | None = None,
) -> tuple[str, dict[str, Any]]:
    """A new image's id and hash fields, every model queued."""
    fields = {**own_image_fields(url, metadata, external_id),
              **shared_image_fields(org, models, webhook_url=webhook_url, webhook_events=webhook_events,
                                    group_id=group_id, deadline=deadline)}
    return new_id("img", org_hash(org)), fields


def own_image_fields(url: str, metadata: dict[str, Any] | None, external_id: str | None) -> dict[str, str]:
    """The fields of a new image that are its own (``shared_image_fields`` has the rest)."""
    return {"url": url, "metadata": dumps(metadata), "external_id": external_id or ""}


def shared_image_fields(
    org: str,
    models: list[str],
    *,
    webhook_url: str | None = None,
    webhook_events: list[EventType] | None = None,
    group_id: str | None = None,
    deadline: datetime | None = None,
) -> dict[str, Any]:
    """The fields a new image has in common with the other images of its request (its group's):
    written once per chunk of a group, not once per image."""
    now = utcnow().isoformat()
    fields: dict[str, Any] = {
        "org": org,
        "models": json.dumps(models),
        "webhook_url": webhook_url or "",
        "webhook_events": json.dumps(webhook_events),
        "group": group_id or "",
        "deadline": deadline_field(deadline),
        "seq": 1,
        "notified_seq": 0,
        "created_at": now,
        "updated_at": now,
    }
    fields.update({MODEL_FIELD + name: ModelResult().to_json() for name in models})
    return fields


COUNT_FIELDS = ("complete", "partial", "failed", "canceled")


def new_group_fields(
    org: str,
    models: list[str],
    total: int,
    *,
    bulk: bool,
    metadata: dict[str, Any] | None,
    external_id: str | None,
    webhook_url: str | None,
    webhook_events: list[EventType] | None,
    deadline: datetime | None = None,
) -> tuple[str, dict[str, Any]]:
    now = utcnow().isoformat()
    fields: dict[str, Any] = {
        "org": org,
        "models": json.dumps(models),
        "metadata": dumps(metadata),
        "external_id": external_id or "",
        "webhook_url": webhook_url or "",
        "webhook_events": json.dumps(webhook_events),
        "bulk": int(bulk),
        "deadline": deadline_field(deadline),
        "total": total,
        **{f"n_{name}": 0 for name in COUNT_FIELDS},
        "seq": 1,
        "notified_seq": 0,
        "announced": 0,
        "created_at": now,
        "updated_at": now,
    }
    return new_id(GROUP_ID_PREFIX, org_hash(org)), fields


def group_record(group_id: str, fields: dict[str, str], sums: dict[str, str]) -> GroupRecord:
    done = {name: int(fields.get(f"n_{name}", 0)) for name in COUNT_FIELDS}
    total = int(fields["total"])
    counts = GroupCounts(total=total, pending=total - sum(done.values()), **done)
    return GroupRecord(
        id=group_id,
        status=group_status(counts, started=fields.get("started") == "1"),
        models=json.loads(fields["models"]),
        counts=counts,
        aggregates=aggregates.aggregates({k: float(v) for k, v in sums.items()}, failed=counts.failed),
        metadata=stored_json(fields.get("metadata"), f"group {group_id} metadata"),
        external_id=fields.get("external_id") or None,
        webhook_url=fields.get("webhook_url") or None,
        webhook_events=json.loads(fields.get("webhook_events", "null")),
        bulk=fields.get("bulk") == "1",
        deadline=deadline_of(fields),
        sequence=int(fields["seq"]),
        created_at=datetime.fromisoformat(fields["created_at"]),
        updated_at=datetime.fromisoformat(fields["updated_at"]),
    )


def group_marks(fields: dict[str, str]) -> GroupMarks:
    """What the group last announced, from its hash."""
    return GroupMarks(
        notified_seq=int(fields["notified_seq"]),
        completed_sent=fields.get("announced") == "1",
        progress_at=float(fields.get("progress_at", 0)),
    )


MARK_FIELDS = ("notified_seq", "announced", "progress_at")  # in lua/announce_group.lua's order


def marks_fields(marks: GroupMarks) -> dict[str, Any]:
    """The hash fields that store ``marks`` (``MARK_FIELDS``)."""
    return dict(zip(MARK_FIELDS, (marks.notified_seq, int(marks.completed_sent), marks.progress_at), strict=True))
