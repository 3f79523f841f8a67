"""Image records: one Redis hash per image, one field per model result.

Per-model fields let each model write its result the moment it finishes without a
read-modify-write of the whole record; the status is derived from them on every read
(``core.schemas.image_status``), so it can never disagree with the results.
``sequence`` rises on every change; ``notified_seq`` remembers the state last announced, which
makes ``finalize`` idempotent when a job is processed twice.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from core.schemas import (
    Delivery,
    ErrorInfo,
    EventType,
    ImageCreate,
    ImageRecord,
    ImageStatus,
    ModelResult,
    image_status,
    utcnow,
)
from core.store.jobs import JobQueue
from core.store.keys import Keys
from core.store.outbox import Outbox
from core.tokens import new_id

MODEL_FIELD = "m:"


def _decode(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _record(image_id: str, fields: dict[str, str]) -> ImageRecord:
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
        metadata=json.loads(fields.get("metadata", "null")),
        external_id=fields.get("external_id") or None,
        webhook_url=fields.get("webhook_url") or None,
        webhook_events=json.loads(fields.get("webhook_events", "null")),
        width=int(fields["width"]) if fields.get("width") else None,
        height=int(fields["height"]) if fields.get("height") else None,
        sequence=int(fields["seq"]),
        created_at=datetime.fromisoformat(fields["created_at"]),
        updated_at=datetime.fromisoformat(fields["updated_at"]),
    )


def completion_event(record: ImageRecord, announced_before: bool) -> EventType:
    if announced_before:
        return EventType.IMAGE_UPDATED
    if record.status is ImageStatus.FAILED:
        return EventType.IMAGE_FAILED
    return EventType.IMAGE_COMPLETED


class ImageStore:
    def __init__(self, redis: Redis, keys: Keys, jobs: JobQueue, outbox: Outbox) -> None:
        self._redis = redis
        self._keys = keys
        self._jobs = jobs
        self._outbox = outbox

    async def create(self, org: str, request: ImageCreate) -> ImageRecord:
        """Write the record and its job in one transaction: durable before the caller answers."""
        image_id = new_id("img")
        now = utcnow().isoformat()
        fields: dict[str, Any] = {
            "org": org,
            "url": request.url,
            "models": json.dumps(request.models),
            "metadata": json.dumps(request.metadata),
            "external_id": request.external_id or "",
            "webhook_url": request.webhook_url or "",
            "webhook_events": json.dumps(request.webhook_events),
            "seq": 1,
            "notified_seq": 0,
            "created_at": now,
            "updated_at": now,
        }
        fields.update({MODEL_FIELD + name: ModelResult().to_json() for name in request.models})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.image(image_id), mapping=fields)
            self._jobs.add(pipe, image_id, request.models)
            await pipe.execute()
        return _record(image_id, {k: str(v) for k, v in fields.items()})

    async def get(self, image_id: str, org: str | None = None) -> ImageRecord | None:
        """The record, or ``None`` when it does not exist or belongs to another org."""
        fields = _decode(await self._redis.hgetall(self._keys.image(image_id)))
        if not fields or (org is not None and fields["org"] != org):
            return None
        return _record(image_id, fields)

    async def _update(self, image_id: str, mapping: dict[str, Any]) -> None:
        key = self._keys.image(image_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={**mapping, "updated_at": utcnow().isoformat()})
            pipe.hincrby(key, "seq", 1)
            await pipe.execute()

    async def mark_started(self, image_id: str, width: int, height: int) -> None:
        await self._update(image_id, {"started": "1", "width": width, "height": height})

    async def write_model_result(self, image_id: str, model: str, result: ModelResult) -> None:
        await self._update(image_id, {MODEL_FIELD + model: result.to_json()})

    async def write_image_error(self, image_id: str, error: ErrorInfo) -> None:
        await self._update(image_id, {"started": "1", "error": error.to_json()})

    async def finalize(self, image_id: str) -> tuple[ImageRecord, Delivery | None]:
        """Announce a finished image once per state: record it as notified and, in the same
        transaction, put its webhook in the outbox. Does nothing for an unfinished image or a
        state already announced."""
        key = self._keys.image(image_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    fields = _decode(await pipe.hgetall(key))
                    record = _record(image_id, fields)
                    notified_seq = int(fields["notified_seq"])
                    if not record.status.is_terminal or record.sequence == notified_seq:
                        await pipe.reset()
                        return record, None
                    event = completion_event(record, announced_before=notified_seq > 0)
                    pipe.multi()
                    pipe.hset(key, "notified_seq", record.sequence)
                    delivery = None
                    wanted = record.webhook_events is None or event in record.webhook_events
                    if record.webhook_url and wanted:
                        delivery = self._outbox.add(
                            pipe,
                            org=fields["org"],
                            url=record.webhook_url,
                            event=event,
                            resource_id=image_id,
                            sequence=record.sequence,
                            data=record.model_dump(mode="json", by_alias=True),
                        )
                    await pipe.execute()
                    return record, delivery
                except WatchError:
                    continue
