"""Image groups: create one, grow it with images or models, read it.

A group of 10,000 images must be accepted in half a second with flat memory (SPEC §8). Its
images arrive in chunks (``create_from``: the API streams them from the body,
``serve_app.group_body``), and each chunk is one script that writes the chunk's image hashes
and appends their ids to the group's image list, where nothing can see them yet
(``lua/write_group_images.lua``: the fields the images share are sent once per chunk). Then one
script makes the group real (``lua/link_group.lua``): the group hash, its images' place in the
org's listing (read from the image list in Redis), the job(s) and the deadline. A crash before
that leaves only unreachable keys, never half a group. The API holds a small group's image ids
(fewer than ``bulk_threshold``: a job each); a bulk group's job lists its images from the image
list in Redis, so for a large group the API holds a chunk at a time.
Groups at or above ``bulk_threshold`` get one bulk job (a Ray Data pipeline) instead of one
job per image.

Cancel and retry visit the group's images chunk by chunk, each chunk one watched transaction
(``ImageStore.cancel_in`` / ``retry_in``), so each image changes and is announced atomically;
the group is then settled once and announces its final state.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.keys import Keys, org_hash
from core.schemas import ErrorInfo, GroupCreate, GroupCreateFields, GroupImage, GroupRecord
from core.store.fair_queue.scripts import with_queue
from core.store.images import ImageStore
from core.store.jobs import Jobs
from core.store.ledger import GroupLedger
from core.store.records import (
    deadline_field,
    decode,
    group_record,
    new_group_fields,
    own_image_fields,
    shared_image_fields,
)
from core.store.transactions import watched
from core.tokens import new_id

CHUNK = 1_000
LUA_DIR = Path(__file__).with_name("lua")
WRITE_IMAGES = (LUA_DIR / "write_group_images.lua").read_text()
LINK = with_queue("link_group", (LUA_DIR / "link_group.lua").read_text())
WATCHED_CHUNK = 200  # images per watched transaction: small enough that a finishing image rarely aborts it


class GroupFull(ValueError):
    """Growing the group would pass ``max_group_images`` (checked where the growth commits)."""

    def __init__(self, limit: int, would_be: int) -> None:
        super().__init__(f"a group holds at most {limit} images; this would make {would_be}")


class RetryRefused(ValueError):
    """Nothing to retry: the group is still running, or none of its images failed."""


def chunks(items: Iterable[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


async def _chunked(items: list[Any]) -> AsyncIterator[list[Any]]:
    for chunk in chunks(items):
        yield chunk


class GroupStore:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        jobs: Jobs,
        images: ImageStore,
        ledger: GroupLedger,
        bulk_threshold: int,
        max_images: int,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._jobs = jobs
        self._images = images
        self.ledger = ledger
        self._bulk_threshold = bulk_threshold
        self._max_images = max_images
        self._write_script = redis.register_script(WRITE_IMAGES)
        self._link_script = redis.register_script(LINK.source)

    async def _write_images(
        self, org: str, group_id: str, models: list[str], images: list[GroupImage], deadline: datetime | None,
        *, listed: bool = False,
    ) -> list[str]:
        """Write new image hashes, a script per ``CHUNK``, appending their ids to the group's
        image list when ``listed``; returns the ids, in order."""
        shared = shared_image_fields(org, models, group_id=group_id, deadline=deadline)
        shared_args = [str(x) for kv in shared.items() for x in kv]
        tag = org_hash(org)
        ids: list[str] = []
        for chunk in chunks(images):
            rows = []
            for image in chunk:
                own = own_image_fields(image.url, image.metadata, image.external_id)
                rows.append([new_id("img", tag), own["url"], own["metadata"], own["external_id"]])
            keys = [self._keys.image(row[0]) for row in rows]
            if listed:
                keys.append(self._keys.group_images(group_id))
            args = {"shared": shared_args, "images": rows, "list": listed}
            await self._write_script(keys=keys, args=[json.dumps(args)])
            ids += [row[0] for row in rows]
        return ids

    def _link(
        self, pipe: Pipeline, org: str, group_id: str, written: list[str], models: list[str], bulk: bool
    ) -> None:
        """Make images written unlisted part of the group and queue their work (inside a
        transaction: ``add_images``)."""
        for chunk in chunks(written):
            pipe.rpush(self._keys.group_images(group_id), *chunk)
        base = time.time()
        pipe.zadd(self._keys.org_images(org), {image_id: base + order * 1e-6 for order, image_id in enumerate(written)})
        if bulk:
            self._jobs.add_bulk(pipe, org, group_id, written, models)
        else:
            self._jobs.add_many(pipe, org, written, models)

    async def create(self, org: str, request: GroupCreate) -> GroupRecord:
        """``create_from`` for a request held whole."""
        return await self.create_from(org, request, len(request.images), _chunked(request.images))

    async def create_from(
        self, org: str, request: GroupCreateFields, total: int, images: AsyncIterable[list[GroupImage]]
    ) -> GroupRecord:
        """A new group of ``total`` images, which come in chunks (see the module docstring); the
        caller has checked them and their number."""
        bulk = total >= self._bulk_threshold
        group_id, fields = new_group_fields(
            org, request.models, total, bulk=bulk, metadata=request.metadata, external_id=request.external_id,
            webhook_url=request.webhook_url, webhook_events=request.webhook_events, deadline=request.deadline,
        )
        written, ids = 0, []  # a bulk group's ids stay in Redis; a small group's are fewer than bulk_threshold
        async for chunk in images:
            got = await self._write_images(org, group_id, request.models, chunk, request.deadline, listed=True)
            written += len(got)
            if not bulk:
                ids += got
        if written != total:
            raise ValueError(f"group {group_id}: {total} images announced, {written} came")
        steps = [self._jobs.bulk_group_step(org)] if bulk else self._jobs.group_steps(org, ids, request.models)
        args: dict[str, Any] = {"base": steps[0].args["base"], "org": org, "id": group_id, "score": time.time(),
                                "fields": [str(x) for kv in fields.items() for x in kv]}
        if bulk:
            args["bulk"] = {"job": steps[0].job_ids[0], "models": request.models}
        else:
            args["job_chunks"] = [step.args["jobs"] for step in steps]
        if request.deadline is not None:
            args["deadline"] = request.deadline.timestamp()
        keys = [self._keys.group(group_id), self._keys.group_images(group_id), self._keys.org_images(org),
                *steps[0].keys, self._images.deadlines_key(group_id)]
        await self._link_script(keys=keys, args=[json.dumps(args)])
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

    async def add_images(
        self, group_id: str, org: str, images: list[GroupImage], deadline: datetime | None = None
    ) -> GroupRecord | None:
        """Grow a group: only the new images run; the group re-opens until they finish (and a
        canceled group runs them: the new work is not canceled). A ``deadline`` is the new images'.

        The new hashes are written first (unreachable), then linked in a transaction under a
        WATCH of the group's growth counter, which every change of its models or images bumps:
        the size limit and the model list are checked against what the link commits with. Raises
        ``GroupFull`` (and drops the written hashes) when the group would pass its limit."""
        record = await self.ledger.get(group_id, org)
        if record is None:
            return None
        self._check_size(record.counts.total, len(images))
        models = record.models
        written = await self._write_images(org, group_id, models, images, deadline)
        key = self._keys.group(group_id)

        async def link(pipe: Pipeline) -> None:
            fields = decode(await pipe.hgetall(key))
            self._check_size(int(fields["total"]), len(images))
            current = json.loads(fields["models"])
            missing = [m for m in current if m not in models]  # added since the hashes were written
            pipe.multi()
            if missing:
                for image_id in written:
                    self._images.queue_models(pipe, image_id, {"models": json.dumps(models)}, missing)
            pipe.hincrby(key, "total", len(images))
            pipe.hincrby(key, "seq", 1)
            pipe.incr(self._keys.group_growth(group_id))
            pipe.hdel(key, "canceled")
            bulk = fields.get("bulk") == "1" or len(images) >= self._bulk_threshold
            self._link(pipe, org, group_id, written, current, bulk=bulk)
            for image_id in written:
                self._images.set_deadline(pipe, image_id, deadline)

        try:
            await watched(self._redis, [self._keys.group_growth(group_id)], link)
        except GroupFull:
            for chunk in chunks(written):
                await self._redis.delete(*(self._keys.image(image_id) for image_id in chunk))
            raise
        return await self.get(group_id, org)

    def _check_size(self, total: int, adding: int) -> None:
        if total + adding > self._max_images:
            raise GroupFull(self._max_images, total + adding)

    async def add_models(
        self, group_id: str, org: str, models: list[str], deadline: datetime | None = None
    ) -> tuple[GroupRecord, list[str]] | None:
        """Run more models on every image of a group; only the models an image lacks run. A
        ``deadline`` becomes the group's (and that of each image given new work).

        The group's model list grows first (under a WATCH of its growth counter, so images added
        concurrently either are already listed or are written with the new models); then every
        listed image gets what it lacks of ``models``, chunk by chunk, each chunk under a WATCH of
        its image hashes, so a concurrent finalize or add never sees or writes a stale image.
        Every image is visited even when the group already lists ``models``, which also completes
        an earlier call that stopped half-way."""
        key = self._keys.group(group_id)

        async def extend(pipe: Pipeline) -> tuple[bool, list[str]] | None:
            fields = decode(await pipe.hgetall(key))
            if not fields or fields["org"] != org:
                return None
            current = json.loads(fields["models"])
            added = [m for m in models if m not in current]
            if added:
                pipe.multi()
                pipe.hset(key, "models", json.dumps([*current, *added]))
                pipe.incr(self._keys.group_growth(group_id))
                pipe.hdel(key, "canceled")
                if deadline is not None:
                    pipe.hset(key, "deadline", deadline_field(deadline))
                    self._images.set_deadline(pipe, group_id, deadline)
            return fields.get("bulk") == "1", added

        outcome = await watched(self._redis, [self._keys.group_growth(group_id)], extend)
        if outcome is None:
            return None
        bulk, added = outcome
        await self._queue_each(org, group_id, bulk, lambda pipe, image_id, fields: self._images.queue_models(
            pipe, image_id, fields, models, deadline))
        return await self.get(group_id, org), added  # type: ignore[return-value]

    async def _queue_each(
        self, org: str, group_id: str, bulk: bool, queue: Callable[[Pipeline, str, dict[str, str]], list[str]]
    ) -> None:
        """Give work to every image of the group: ``queue(pipe, image id, hash)`` queues an
        image's models and returns them; their jobs go in the same transaction, one per image,
        or one bulk job per chunk of a bulk group."""

        def change(pipe: Pipeline, image_id: str, fields: dict[str, str]) -> list[str]:
            models = queue(pipe, image_id, fields)
            if models and not bulk:
                self._jobs.add(pipe, org, image_id, models)
            return models

        await self._each_image(group_id, change, self._bulk_job(org, group_id) if bulk else None)

    def _bulk_job(self, org: str, group_id: str) -> Callable[[Pipeline, dict[str, list[str]]], None]:
        """What closes a chunk of a bulk group's images given work: one bulk job for them."""

        def add(pipe: Pipeline, queued: dict[str, list[str]]) -> None:
            queued = {image_id: models for image_id, models in queued.items() if models}
            if queued:
                models = list(dict.fromkeys(m for wanted in queued.values() for m in wanted))
                self._jobs.add_bulk(pipe, org, group_id, list(queued), models)

        return add

    async def _read(self, image_keys: list[str]) -> list[dict[str, str]]:
        """The image hashes in one round trip on another connection (empty where one is gone):
        called under the caller's WATCH, so a change after this read still aborts its transaction."""
        async with self._redis.pipeline(transaction=False) as reader:
            for image_key in image_keys:
                reader.hgetall(image_key)
            return [decode(raw) for raw in await reader.execute()]

    async def _each_image(
        self,
        group_id: str,
        change: Callable[[Pipeline, str, dict[str, str]], Any],
        finish: Callable[[Pipeline, dict[str, Any]], None] | None = None,
    ) -> None:
        """Apply ``change(pipe, image id, hash)`` to every existing image of the group, a chunk
        per watched transaction; ``finish(pipe, {image id: what change returned})`` closes each."""
        for image_ids in chunks(await self.ledger.image_ids(group_id), WATCHED_CHUNK):
            image_keys = [self._keys.image(image_id) for image_id in image_ids]

            async def apply(pipe: Pipeline, image_ids: list[str] = image_ids, image_keys: list[str] = image_keys
                            ) -> None:
                hashes = await self._read(image_keys)
                pipe.multi()
                changed = {image_id: change(pipe, image_id, fields)
                           for image_id, fields in zip(image_ids, hashes, strict=True) if fields}
                if finish is not None:
                    finish(pipe, changed)

            await watched(self._redis, image_keys, apply)

    async def cancel(self, group_id: str, org: str | None = None, error: ErrorInfo | None = None) -> GroupRecord | None:
        """Cancel every unfinished image of a group (``ImageStore.cancel``: results so far are
        kept) and mark the group canceled, which the processor running its bulk job watches for
        (it cancels the Ray Data run). The group then announces its final state once:
        ``canceled``, or ``partial`` with ``counts.canceled`` when some images had finished. A
        finished group is answered as it is."""
        key = self._keys.group(group_id)

        async def mark(pipe: Pipeline) -> bool | None:
            fields = decode(await pipe.hgetall(key))
            if not fields or (org is not None and fields["org"] != org):
                return None
            if group_record(group_id, fields, {}).status.is_terminal:
                return False
            pipe.multi()
            pipe.hset(key, "canceled", 1)
            return True

        marked = await watched(self._redis, [key], mark)
        if marked is None:
            return None
        if marked:
            await self._each_image(group_id, lambda pipe, image_id, fields: self._images.cancel_in(
                pipe, image_id, fields, error))
            await self.ledger.settle(group_id)
        return await self.get(group_id, org)

    async def canceled(self, group_id: str) -> bool:
        """Whether the group was canceled since its work was last queued (a bulk run's stop sign)."""
        return await self._redis.hget(self._keys.group(group_id), "canceled") == b"1"

    async def retry(self, group_id: str, org: str) -> GroupRecord | None:
        """Run again only what failed: the failed images and the failed models of partial ones
        (canceled images stay canceled). The group re-opens and announces again when done.
        Raises ``RetryRefused`` while the group runs or when nothing failed. Retried work has
        no deadline (the group's is dropped)."""
        key = self._keys.group(group_id)

        async def reopen(pipe: Pipeline) -> bool | None:
            fields = decode(await pipe.hgetall(key))
            if not fields or fields["org"] != org:
                return None
            record = group_record(group_id, fields, {})
            if not record.status.is_terminal:
                raise RetryRefused(f"group {group_id} is still {record.status.value}; retry it once it finishes")
            if not (record.counts.failed or record.counts.partial):
                raise RetryRefused(f"no image of group {group_id} failed")
            pipe.multi()
            pipe.hdel(key, "canceled", "deadline")
            pipe.zrem(self._keys.deadlines(self._keys.shard_of_id(group_id)), group_id)
            return fields.get("bulk") == "1"

        bulk = await watched(self._redis, [key], reopen)
        if bulk is None:
            return None
        await self._queue_each(org, group_id, bulk, self._images.retry_in)
        return await self.get(group_id, org)
