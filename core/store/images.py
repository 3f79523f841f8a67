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
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from core.schemas import Delivery, ErrorInfo, EventType, ImageCreate, ImageRecord, ImageStatus, ModelResult, utcnow
from core.store.jobs import JobQueue
from core.store.keys import Keys
from core.store.ledger import GroupLedger
from core.store.outbox import Outbox
from core.store.records import MODEL_FIELD, decode, image_record, new_image_fields


def completion_event(record: ImageRecord, announced_before: bool) -> EventType:
    if announced_before:
        return EventType.IMAGE_UPDATED
    if record.status is ImageStatus.FAILED:
        return EventType.IMAGE_FAILED
    return EventType.IMAGE_COMPLETED


class ImageStore:
    def __init__(self, redis: Redis, keys: Keys, jobs: JobQueue, outbox: Outbox, ledger: GroupLedger) -> None:
        self._redis = redis
        self._keys = keys
        self._jobs = jobs
        self._outbox = outbox
        self._ledger = ledger

    def index(self, pipe: Pipeline, org: str, image_id: str, fields: dict[str, Any]) -> None:
        """Write a new image and its place in the org's listing (inside the caller's pipeline)."""
        pipe.hset(self._keys.image(image_id), mapping=fields)
        score = datetime.fromisoformat(fields["created_at"]).timestamp()
        pipe.zadd(self._keys.org_images(org), {image_id: score})

    async def create(self, org: str, request: ImageCreate) -> ImageRecord:
        """Write the record and its job in one transaction: durable before the caller answers."""
        image_id, fields = new_image_fields(
            org, request.url, request.models, metadata=request.metadata, external_id=request.external_id,
            webhook_url=request.webhook_url, webhook_events=request.webhook_events,
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            self.index(pipe, org, image_id, fields)
            self._jobs.add(pipe, image_id, request.models)
            await pipe.execute()
        return image_record(image_id, {k: str(v) for k, v in fields.items()})

    async def get(self, image_id: str, org: str | None = None) -> ImageRecord | None:
        """The record, or ``None`` when it does not exist or belongs to another org."""
        fields = decode(await self._redis.hgetall(self._keys.image(image_id)))
        if not fields or (org is not None and fields["org"] != org):
            return None
        return image_record(image_id, fields)

    async def get_many(self, image_ids: list[str]) -> list[ImageRecord]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for image_id in image_ids:
                pipe.hgetall(self._keys.image(image_id))
            raws = await pipe.execute()
        return [image_record(i, decode(raw)) for i, raw in zip(image_ids, raws, strict=True) if raw]

    async def page(self, org: str, after: float | None, limit: int) -> list[tuple[str, float]]:
        """The org's image ids, newest first, strictly older than ``after`` (a cursor)."""
        upper = f"({after}" if after is not None else "+inf"
        rows = await self._redis.zrevrangebyscore(
            self._keys.org_images(org), upper, "-inf", start=0, num=limit, withscores=True
        )
        return [(member.decode(), score) for member, score in rows]

    async def add_models(self, image_id: str, org: str, models: list[str]) -> tuple[ImageRecord, list[str]] | None:
        """Queue the models an image does not have yet, with their job, in one transaction.

        Returns the updated record and the models added (possibly none), or ``None`` when the
        image does not exist for ``org``."""
        key = self._keys.image(image_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    fields = decode(await pipe.hgetall(key))
                    if not fields or fields["org"] != org:
                        await pipe.reset()
                        return None
                    pipe.multi()
                    added = self.queue_models(pipe, image_id, fields, models)
                    if not added:
                        await pipe.reset()
                        return image_record(image_id, fields), []
                    self._jobs.add(pipe, image_id, added)
                    await pipe.execute()
                    return await self.get(image_id), added  # type: ignore[return-value]
                except WatchError:
                    continue

    def queue_models(self, pipe: Pipeline, image_id: str, fields: dict[str, str], models: list[str]) -> list[str]:
        """Queue the ``models`` the image lacks (in the caller's transaction); returns them.

        A counted group image goes back to pending until the new models finish."""
        current = json.loads(fields["models"])
        added = [m for m in models if m not in current]
        if not added:
            return []
        key = self._keys.image(image_id)
        mapping = {MODEL_FIELD + m: ModelResult().to_json() for m in added}
        mapping.update(models=json.dumps([*current, *added]), updated_at=utcnow().isoformat())
        pipe.hset(key, mapping=mapping)
        pipe.hincrby(key, "seq", 1)
        if fields.get("group"):
            self._ledger.uncount(pipe, fields["group"], image_id, fields)
        return added

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

    async def finalize(self, image_id: str) -> tuple[ImageRecord, list[Delivery]]:
        """Announce a finished image once per state.

        In one transaction: mark the state notified, put the image's webhook in the outbox and,
        for a group image, move it into its count and aggregates. Then settle the group, which
        announces the group's own events. Safe to repeat: an announced state adds nothing."""
        key = self._keys.image(image_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    fields = decode(await pipe.hgetall(key))
                    record = image_record(image_id, fields)
                    notified_seq = int(fields["notified_seq"])
                    if not record.status.is_terminal or record.sequence == notified_seq:
                        await pipe.reset()
                        deliveries: list[Delivery] = []
                        break
                    pipe.multi()
                    pipe.hset(key, "notified_seq", record.sequence)
                    deliveries = self._announce(pipe, fields, record, announced_before=notified_seq > 0)
                    if record.group_id:
                        self._ledger.count(pipe, record.group_id, record, fields)
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        if record.group_id and record.status.is_terminal:
            deliveries += await self._ledger.settle(record.group_id)
        return record, deliveries

    def _announce(
        self, pipe: Pipeline, fields: dict[str, str], record: ImageRecord, announced_before: bool
    ) -> list[Delivery]:
        event = completion_event(record, announced_before)
        if not record.webhook_url or (record.webhook_events is not None and event not in record.webhook_events):
            return []
        return [
            self._outbox.add(
                pipe, org=fields["org"], url=record.webhook_url, event=event, resource_id=record.id,
                sequence=record.sequence, data=record.model_dump(mode="json", by_alias=True),
            )
        ]
