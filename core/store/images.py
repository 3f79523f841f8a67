"""Image records: one Redis hash per image, one field per model result.

Per-model fields let each model write its result the moment it finishes without a
read-modify-write of the whole record; the status is derived from them on every read
(``core.schemas.image_status``), so it can never disagree with the results.
``sequence`` rises on every change; ``notified_seq`` remembers the state last announced, which
makes ``finalize`` idempotent when a job is processed twice.

A canceled image is final: ``cancel`` marks it and announces it in one watched transaction, and
every later engine write to it is dropped (``lua/update_image.lua``), so a model that was still
running cannot change the state its webhook already announced.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.delivery import Outbox
from core.delivery.scripts import Call, with_delivery
from core.events import Events, image_event
from core.keys import Keys
from core.schemas import (
    Delivery,
    ErrorInfo,
    EventType,
    ImageCreate,
    ImageRecord,
    ImageStatus,
    ModelResult,
    ModelStatus,
    utcnow,
)
from core.store.fair_queue.scripts import with_queue
from core.store.jobs import Jobs
from core.store.ledger import GroupLedger
from core.store.ratelimit import BUCKET_LIB, Charge, Verdict
from core.store.records import (
    MODEL_FIELD,
    Written,
    deadline_field,
    decode,
    flat_hash,
    image_record,
    new_image_fields,
    result_fields,
)
from core.store.transactions import watched

LUA_DIR = Path(__file__).with_name("lua")
UPDATE_SCRIPT = (LUA_DIR / "update_image.lua").read_text()
FINALIZE = with_delivery("finalize", (LUA_DIR / "finalize.lua").read_text())
CREATE = with_queue("create_image", BUCKET_LIB + (LUA_DIR / "create_image.lua").read_text())


class ImageStore:
    def __init__(
        self, redis: Redis, keys: Keys, jobs: Jobs, outbox: Outbox, ledger: GroupLedger, events: Events
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._jobs = jobs
        self._outbox = outbox
        self._ledger = ledger
        self._events = events
        self._update_script = redis.register_script(UPDATE_SCRIPT)
        self._create_script = redis.register_script(CREATE.source)

    async def create(self, org: str, request: ImageCreate) -> ImageRecord:
        """Write the record and its job in one script: durable before the caller answers."""
        image_id, written, _ = await self._create(org, request, None)
        return image_record(image_id, written)

    async def create_charged(
        self, org: str, request: ImageCreate, charge: Charge
    ) -> tuple[ImageRecord | None, Verdict]:
        """``create``, taking ``charge`` from the API key's bucket in the same script: one round
        trip for both, and a refused charge writes nothing (the record is then ``None``)."""
        image_id, written, reply = await self._create(org, request, charge)
        verdict = Verdict.of(charge.kind, reply)
        return (image_record(image_id, written) if verdict.allowed else None), verdict

    async def _create(self, org: str, request: ImageCreate, charge: Charge | None) -> tuple[str, dict[str, str], Any]:
        """The create script (``lua/create_image.lua``): record, listing, job, deadline and the
        charge if any. Returns the id, the fields written and the script's answer."""
        image_id, fields = new_image_fields(
            org, request.url, request.models, metadata=request.metadata, external_id=request.external_id,
            webhook_url=request.webhook_url, webhook_events=request.webhook_events, deadline=request.deadline,
        )
        written = {k: str(v) for k, v in fields.items()}
        job = self._jobs.add_step(org, image_id, request.models)
        args: dict[str, Any] = {**job.args, "id": image_id, "fields": [x for kv in written.items() for x in kv],
                                "score": datetime.fromisoformat(fields["created_at"]).timestamp()}
        if request.deadline is not None:
            args["deadline"] = request.deadline.timestamp()
        keys = [self._keys.image(image_id), self._keys.org_images(org), *job.keys, self.deadlines_key(image_id)]
        if charge is not None:
            keys += charge.keys
            args["charge"] = charge.args
        return image_id, written, await self._create_script(keys=keys, args=[json.dumps(args)])

    async def get(self, image_id: str, org: str | None = None) -> ImageRecord | None:
        """The record, or ``None`` when it does not exist or belongs to another org."""
        found = await self.read(image_id, org)
        return None if found is None else found[0]

    async def read(self, image_id: str, org: str | None = None) -> tuple[ImageRecord, dict[str, str]] | None:
        """``get``, with the hash it was read from: the engine's view of the image, which its
        own writes keep current (``Written``) so that ``finalize`` need not read it again."""
        fields = decode(await self._redis.hgetall(self._keys.image(image_id)))
        if not fields or (org is not None and fields["org"] != org):
            return None
        return image_record(image_id, fields), fields

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

    def deadlines_key(self, resource_id: str) -> str:
        return self._keys.deadlines(self._keys.shard_of_id(resource_id))

    def set_deadline(self, pipe: Pipeline, resource_id: str, deadline: datetime | None) -> None:
        """Put an image (or group) on the deadline sweep (inside the caller's transaction)."""
        if deadline is not None:
            pipe.zadd(self.deadlines_key(resource_id), {resource_id: deadline.timestamp()})

    async def add_models(
        self, image_id: str, org: str, models: list[str], deadline: datetime | None = None
    ) -> tuple[ImageRecord, list[str]] | None:
        """Queue the models an image does not have yet, with their job, in one transaction.

        Returns the updated record and the models added (possibly none), or ``None`` when the
        image does not exist for ``org``. A ``deadline`` becomes the image's when models are added."""
        key = self._keys.image(image_id)

        async def add(pipe: Pipeline) -> tuple[dict[str, str], list[str]] | None:
            fields = decode(await pipe.hgetall(key))
            if not fields or fields["org"] != org:
                return None
            pipe.multi()
            added = self.queue_models(pipe, image_id, fields, models, deadline)
            if added:
                self._jobs.add(pipe, org, image_id, added)
                self.set_deadline(pipe, image_id, deadline)  # a group image's own, beside its group's
            return fields, added

        outcome = await watched(self._redis, [key], add)
        if outcome is None:
            return None
        fields, added = outcome
        if not added:
            return image_record(image_id, fields), []
        return await self.get(image_id), added  # type: ignore[return-value]

    def queue_models(
        self, pipe: Pipeline, image_id: str, fields: dict[str, str], models: list[str], deadline: datetime | None = None
    ) -> list[str]:
        """Queue the ``models`` the image lacks (in the caller's transaction); returns them.

        A counted group image goes back to pending until the new models finish. A deadline covers
        the work of the request that set it: ``deadline`` replaces the image's (the caller puts it
        on the sweep), and without one the image's old deadline is dropped, off the sweep too, or
        it would cancel the new work the moment it starts. A canceled image is final: nothing is
        queued on it."""
        if fields.get("canceled") == "1":
            return []
        current = json.loads(fields["models"])
        added = [m for m in models if m not in current]
        if not added:
            return []
        key = self._keys.image(image_id)
        mapping = {MODEL_FIELD + m: ModelResult().to_json() for m in added}
        mapping.update(models=json.dumps([*current, *added]), updated_at=utcnow().isoformat())
        if deadline is not None:
            mapping["deadline"] = deadline_field(deadline)
        elif fields.get("deadline"):
            pipe.hdel(key, "deadline")
            pipe.zrem(self.deadlines_key(image_id), image_id)
        pipe.hset(key, mapping=mapping)
        pipe.hincrby(key, "seq", 1)
        if fields.get("group"):
            self._ledger.uncount(pipe, fields["group"], image_id, fields)
        return added

    def retry_in(self, pipe: Pipeline, image_id: str, fields: dict[str, str]) -> list[str]:
        """Queue again (in the caller's MULTI) what failed on a finished image: every unfinished
        model of a failed image, the failed models of a partial one; returns them (none for any
        other state). The image goes back to pending in its group and loses its deadline."""
        record = image_record(image_id, fields)
        if record.status not in (ImageStatus.FAILED, ImageStatus.PARTIAL):
            return []
        models = [name for name, result in record.models.items() if result.status is not ModelStatus.COMPLETE]
        key = self._keys.image(image_id)
        mapping = {MODEL_FIELD + m: ModelResult().to_json() for m in models}
        pipe.hset(key, mapping={**mapping, "updated_at": utcnow().isoformat()})
        pipe.hdel(key, "error", "deadline")
        pipe.hincrby(key, "seq", 1)
        if record.group_id:
            self._ledger.uncount(pipe, record.group_id, image_id, fields)
        return models

    async def _update(self, image_id: str, mapping: dict[str, Any]) -> Written | None:
        """An engine write: applied atomically unless the image is gone or canceled. Returns
        what it wrote, or ``None`` when it was dropped, which is also the engine's fresh read of
        that state (a dropped write means no more work is worth doing on the image)."""
        fields = {name: str(value) for name, value in {**mapping, "updated_at": utcnow().isoformat()}.items()}
        args = [part for item in fields.items() for part in item]
        seq = int(await self._update_script(keys=[self._keys.image(image_id)], args=args))
        return Written(seq, fields | {"seq": str(seq)}) if seq else None

    async def mark_started(self, image_id: str, width: int, height: int) -> Written | None:
        """The started mark and size; ``None``: the image is gone or canceled (nothing written)."""
        return await self._update(image_id, {"started": "1", "width": width, "height": height})

    async def write_model_result(self, image_id: str, model: str, result: ModelResult) -> Written | None:
        return await self.write_results(image_id, {model: result})

    async def write_results(
        self, image_id: str, results: dict[str, ModelResult], size: tuple[int, int] | None = None
    ) -> Written | None:
        """Several model results at once (a bulk run has them together; the engine's models
        that finish together), with the started mark and the image's ``size`` when given: one
        round trip and one sequence step. ``None`` when dropped (see ``_update``) or when there
        is nothing to write."""
        mapping = result_fields(results, size)
        return await self._update(image_id, mapping) if mapping else None

    async def write_image_error(self, image_id: str, error: ErrorInfo) -> Written | None:
        return await self._update(image_id, {"started": "1", "error": error.to_json()})

    async def finalize(
        self, image_id: str, known: dict[str, str] | None = None, results: dict[str, ModelResult] | None = None
    ) -> tuple[ImageRecord, list[Delivery]]:
        """Announce a finished image once per state (``core.events`` decides what).

        One read, then one script (``lua/finalize.lua``) that applies only if the image is still
        as read: it marks the state notified, puts the image's webhook in the outbox and, for a
        group image, moves it into its count and aggregates; if the image moved meanwhile, it is
        read again. Then the group is settled, which announces the group's own events. Safe to
        repeat: an announced state adds nothing.

        The engine passes what it knows: ``known``, the hash as its own writes left it (no read
        then), and ``results``, its last models' results, which the same script writes with the
        announcement (one write fewer). If the image moved since, the results are written as
        any write is and the image is read again."""
        key = self._keys.image(image_id)
        group: dict[str, str] | None = None  # the group as the script left it; None: read it again
        fields, pending = known, result_fields(results or {})
        while True:
            told = fields is not None  # the caller's view, not a read of this loop
            if fields is None:
                if pending:  # the view the results were to go with is stale: write them alone
                    await self._update(image_id, pending)
                    pending = {}
                fields = decode(await self._redis.hgetall(key))
            writes = {} if not pending else {
                **{name: str(value) for name, value in pending.items()},
                "seq": str(int(fields["seq"]) + 1), "updated_at": utcnow().isoformat()}
            record = image_record(image_id, fields | writes)
            event = image_event(record, int(fields["notified_seq"]))
            if event is None:  # announced already (a repeat after a crash): settle from a fresh read
                if pending or told:  # only a read says so (the results, if any, written alone first)
                    fields = None
                    continue
                deliveries: list[Delivery] = []
                break
            call, keys, deliveries = self._announcement(record, fields, event, writes)
            applied = await self._outbox.run_with(FINALIZE, call, keys)
            if applied:
                group = flat_hash(applied) if isinstance(applied, list) else None
                break
            fields = None
        if record.group_id and record.status.is_terminal:
            deliveries += await self._ledger.settle(record.group_id, seen=group)
        return record, deliveries

    def _announcement(
        self, record: ImageRecord, fields: dict[str, str], event: EventType, writes: dict[str, str] | None = None
    ) -> tuple[Call, list[str], list[Delivery]]:
        """The finalize script's call and keys that announce ``record``'s state (``fields``: the
        hash as the script will find it; ``writes``: fields the script sets with the marks, which
        ``record`` already shows), and the delivery it queues, if any."""
        group, marks = (None, {}) if not record.group_id else self._ledger.count(record, fields)
        marks = {**(writes or {}), **marks, "notified_seq": str(record.sequence)}
        image = {"id": record.id, "seq": fields["seq"], "notified": fields["notified_seq"],
                 "marks": [part for item in marks.items() for part in item], "channel": self._keys.images_finished,
                 "deadline": bool(fields.get("deadline"))}
        keys = [self._keys.image(record.id), self.deadlines_key(record.id)]
        if group is not None:  # absent, not null: cjson's null is true in Lua
            image["group"] = group
            keys += [self._keys.group(record.group_id), self._keys.group_sums(record.group_id)]
        announcement = self._events.announce(fields["org"], record, event)
        if announcement is None:
            return Call(self._keys.shard_of_id(record.id), {"image": image}), keys, []
        delivery, call = self._outbox.delivery_call(announcement, image=image)
        return call, keys, [delivery]

    def cancel_in(
        self, pipe: Pipeline, image_id: str, fields: dict[str, str], error: ErrorInfo | None
    ) -> tuple[ImageRecord, list[Delivery]] | None:
        """Cancel an unfinished image and announce it, inside the caller's MULTI (``fields``:
        its hash as read under WATCH); ``None`` for a finished one, which is left as it is.
        ``error`` says why when it was not asked for (``deadline``)."""
        record = image_record(image_id, fields)
        if record.status.is_terminal:
            return None
        changes = {"canceled": "1", "seq": str(record.sequence + 1), "updated_at": utcnow().isoformat()}
        if error is not None:
            changes["error"] = error.to_json()
        pipe.hset(self._keys.image(image_id), mapping=changes)
        updated = {**fields, **changes}
        canceled = image_record(image_id, updated)
        event = image_event(canceled, int(fields["notified_seq"]))
        if event is None:
            return canceled, []
        call, keys, deliveries = self._announcement(canceled, updated, event)
        self._outbox.queue_with(pipe, FINALIZE, call, keys)  # under the caller's WATCH: it applies
        return canceled, deliveries

    async def cancel(self, image_id: str, org: str | None = None, error: ErrorInfo | None = None) -> ImageRecord | None:
        """Cancel an image: queued work never starts, running work stops at its next model, the
        results so far are kept, and the webhook fires once. One watched transaction, so a cancel
        racing ``finalize`` announces one state or the other, never both. A finished (or already
        canceled) image is answered as it is; ``None`` when it does not exist for ``org``."""
        key = self._keys.image(image_id)

        async def cancel(pipe: Pipeline) -> tuple[ImageRecord | None, bool]:
            fields = decode(await pipe.hgetall(key))
            if not fields or (org is not None and fields["org"] != org):
                return None, False
            pipe.multi()
            outcome = self.cancel_in(pipe, image_id, fields, error)
            return (image_record(image_id, fields), False) if outcome is None else (outcome[0], True)

        record, changed = await watched(self._redis, [key], cancel)
        if changed and record is not None and record.group_id:
            await self._ledger.settle(record.group_id)
        return record
