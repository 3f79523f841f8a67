"""Image groups: create one, grow it with images or models, read it.

A group of 10,000 images must be accepted in well under two seconds with flat memory. Image
hashes are written first, in pipelined chunks, where nothing can see them yet; then one
transaction makes the group real: the group hash, its image list, the org's listing and the
job(s). A crash before that transaction leaves only unreachable hashes, never half a group.
Groups at or above ``bulk_threshold`` get one bulk job (a Ray Data pipeline) instead of one
job per image.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.keys import Keys
from core.schemas import GroupCreate, GroupImage, GroupRecord
from core.store.images import ImageStore
from core.store.jobs import Jobs
from core.store.ledger import GroupLedger
from core.store.records import decode, new_group_fields, new_image_fields

CHUNK = 1_000


def chunks(items: Iterable[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class GroupStore:
    def __init__(
        self, redis: Redis, keys: Keys, jobs: Jobs, images: ImageStore, ledger: GroupLedger, bulk_threshold: int
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._jobs = jobs
        self._images = images
        self.ledger = ledger
        self._bulk_threshold = bulk_threshold

    async def _write_images(
        self, org: str, group_id: str, models: list[str], images: list[GroupImage]
    ) -> dict[str, int]:
        """Write image hashes in chunks; returns ``{image id: position}`` for the listing."""
        written: dict[str, int] = {}
        for chunk in chunks(images):
            async with self._redis.pipeline(transaction=False) as pipe:
                for image in chunk:
                    image_id, fields = new_image_fields(
                        org, image.url, models, metadata=image.metadata, external_id=image.external_id,
                        group_id=group_id,
                    )
                    pipe.hset(self._keys.image(image_id), mapping=fields)
                    written[image_id] = len(written)
                await pipe.execute()
        return written

    def _link(
        self, pipe: Pipeline, org: str, group_id: str, written: dict[str, int], models: list[str], bulk: bool
    ) -> None:
        """Make written images part of the group and queue their work (inside a transaction)."""
        ids = list(written)
        for chunk in chunks(ids):
            pipe.rpush(self._keys.group_images(group_id), *chunk)
        base = time.time()
        pipe.zadd(self._keys.org_images(org), {image_id: base + order * 1e-6 for image_id, order in written.items()})
        if bulk:
            self._jobs.add_bulk(pipe, org, group_id, ids, models)
        else:
            self._jobs.add_many(pipe, org, ids, models)

    async def create(self, org: str, request: GroupCreate) -> GroupRecord:
        group_id, fields = new_group_fields(
            org, request.models, len(request.images), bulk=len(request.images) >= self._bulk_threshold,
            metadata=request.metadata, external_id=request.external_id,
            webhook_url=request.webhook_url, webhook_events=request.webhook_events,
        )
        written = await self._write_images(org, group_id, request.models, request.images)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.group(group_id), mapping=fields)
            self._link(pipe, org, group_id, written, request.models, bulk=bool(fields["bulk"]))
            await pipe.execute()
        return await self.ledger.get(group_id)  # type: ignore[return-value]

    async def get(self, group_id: str, org: str, *, image_ids: bool = True) -> GroupRecord | None:
        """The org's group, with its image ids unless ``image_ids`` is false (a lookup that only
        needs the group need not read up to ``max_group_images`` ids)."""
        record = await self.ledger.get(group_id, org)
        if record is not None and image_ids:
            record.image_ids = await self.ledger.image_ids(group_id)
        return record

    async def image_ids(self, group_id: str, start: int = 0, stop: int = -1) -> list[str]:
        """The group's image ids in the order they were added (``stop`` inclusive)."""
        return await self.ledger.image_ids(group_id, start, stop)

    async def add_images(self, group_id: str, org: str, images: list[GroupImage]) -> GroupRecord | None:
        """Grow a group: only the new images run; the group re-opens until they finish."""
        record = await self.ledger.get(group_id, org)
        if record is None:
            return None
        written = await self._write_images(org, group_id, record.models, images)
        bulk = record.bulk or len(images) >= self._bulk_threshold
        async with self._redis.pipeline(transaction=True) as pipe:
            key = self._keys.group(group_id)
            pipe.hincrby(key, "total", len(images))
            pipe.hincrby(key, "seq", 1)
            self._link(pipe, org, group_id, written, record.models, bulk=bulk)
            await pipe.execute()
        return await self.get(group_id, org)

    async def add_models(self, group_id: str, org: str, models: list[str]) -> tuple[GroupRecord, list[str]] | None:
        """Run more models on every image of a group; only the models an image lacks run."""
        record = await self.ledger.get(group_id, org)
        if record is None:
            return None
        added = [m for m in models if m not in record.models]
        if not added:
            return await self.get(group_id, org), []  # type: ignore[return-value]
        ids = await self.ledger.image_ids(group_id)
        for chunk in chunks(ids):
            async with self._redis.pipeline(transaction=False) as reader:
                for image_id in chunk:
                    reader.hgetall(self._keys.image(image_id))
                raws = await reader.execute()
            async with self._redis.pipeline(transaction=True) as pipe:
                for image_id, raw in zip(chunk, raws, strict=True):
                    queued = self._images.queue_models(pipe, image_id, decode(raw), added)
                    if queued and not record.bulk:
                        self._jobs.add(pipe, org, image_id, queued)
                if record.bulk:
                    self._jobs.add_bulk(pipe, org, group_id, chunk, added)
                await pipe.execute()
        await self._redis.hset(self._keys.group(group_id), "models", json.dumps([*record.models, *added]))
        return await self.get(group_id, org), added  # type: ignore[return-value]


