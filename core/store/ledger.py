"""A group's ledger: its counts and aggregate sums, moved as each image finishes, and the
announcements that follow from them.

``count`` says what an image's finalize script does to the group: it moves the counts and adds
to the sums inside that script (atomic, so thousands of images can finish at once without
locking the group, and one read and one write of each hash however many sums change).
``settle`` then asks ``core.events`` whether the group owes an announcement, and commits it with
the marks of what was announced in one script that applies only to the group as read
(``lua/announce_group.lua``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core import aggregates
from core.delivery import Outbox
from core.delivery.scripts import Call, with_delivery
from core.events import Events, GroupDue, wants_summaries
from core.keys import Keys
from core.schemas import Delivery, GroupRecord, ImageRecord, ImageSummary, utcnow
from core.store.records import MARK_FIELDS, decode, group_marks, group_record, image_record, marks_fields


def summary(record: ImageRecord) -> ImageSummary:
    condition, quality = aggregates.score_of(record, "condition"), aggregates.score_of(record, "quality")
    room = aggregates.room_of(record)
    return ImageSummary(
        id=record.id,
        status=record.status,
        url=record.url,
        external_id=record.external_id,
        room=None if room == aggregates.UNKNOWN_ROOM else room,
        condition=condition[0] if condition else None,
        quality=quality[0] if quality else None,
        error=record.error.code if record.error else None,
    )


ANNOUNCE_GROUP = with_delivery("announce_group", (Path(__file__).with_name("lua") / "announce_group.lua").read_text())


class GroupLedger:
    def __init__(self, redis: Redis, keys: Keys, outbox: Outbox, events: Events) -> None:
        self._redis = redis
        self._keys = keys
        self._outbox = outbox
        self._events = events

    @staticmethod
    def count(record: ImageRecord, fields: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        """Move a finished image into its count and replace its aggregate contribution: what the
        finalize script (``core/store/lua/finalize.lua``) does to the group (its ``group``
        argument: the count left and joined, the sums to add), and the image's own fields that
        record what was counted, written with the image's marks."""
        previous, current = fields.get("counted", ""), record.status.value
        contribution = aggregates.contribution(record)
        sums = aggregates.delta(json.loads(fields.get("contrib", "{}")), contribution)
        change = {"prev": previous, "cur": current, "sums": sums, "at": utcnow().isoformat()}
        return change, {"counted": current, "contrib": json.dumps(contribution)}

    def uncount(self, pipe: Pipeline, group_id: str, image_id: str, fields: dict[str, str]) -> None:
        """An image gets new work: back to pending (its contribution is replaced when it finishes)."""
        counted = fields.get("counted")
        if counted:
            group_key = self._keys.group(group_id)
            pipe.hincrby(group_key, f"n_{counted}", -1)
            pipe.hdel(self._keys.image(image_id), "counted")
            self._touch(pipe, group_key)

    @staticmethod
    def _touch(pipe: Pipeline, group_key: str, **fields: str) -> None:
        """A change to the group: its sequence steps, ``updated_at`` and ``fields`` in one HSET."""
        pipe.hincrby(group_key, "seq", 1)
        pipe.hset(group_key, mapping={**fields, "updated_at": utcnow().isoformat()})

    async def get(self, group_id: str, org: str | None = None) -> GroupRecord | None:
        fields = decode(await self._redis.hgetall(self._keys.group(group_id)))
        if not fields or (org is not None and fields["org"] != org):
            return None
        sums = decode(await self._redis.hgetall(self._keys.group_sums(group_id)))
        return group_record(group_id, fields, sums)

    async def image_ids(self, group_id: str, start: int = 0, stop: int = -1) -> list[str]:
        """The group's image ids in the order they were added (``stop`` inclusive)."""
        return [i.decode() for i in await self._redis.lrange(self._keys.group_images(group_id), start, stop)]

    async def summaries(self, group_id: str) -> list[ImageSummary]:
        ids = await self.image_ids(group_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for image_id in ids:
                pipe.hgetall(self._keys.image(image_id))
            raws = await pipe.execute()
        return [summary(image_record(i, decode(raw))) for i, raw in zip(ids, raws, strict=True) if raw]

    async def settle(self, group_id: str, seen: dict[str, str] | None = None) -> list[Delivery]:
        """Announce what changed in the group since its last announcement, if anything.

        ``seen``: the group's hash as the caller's own atomic write left it (the finalize script
        returns it). When it owes no event, nothing is read: a state it does not show comes from
        a later write, and every write that can make an event due (a finish, a cancel) settles
        after itself. Most finishes of a group's images owe none (progress is throttled).

        Otherwise: read the group, and announce what it owes in one script that applies only if
        no other announcement committed meanwhile (``lua/announce_group.lua``); a progress event
        does not start over for the other finishes that land meanwhile. Under a WATCH of the
        group, every settle of a burst did: 100 images finishing together made 615 attempts at
        one progress event, each aborted by the next finish, and each attempt in the group's last
        moments re-read all its images' summaries for ``group.completed``."""
        if seen is not None and self._due(group_record(group_id, seen, {}), seen) is None:
            return []
        key, growth_key = self._keys.group(group_id), self._keys.group_growth(group_id)
        while True:
            # One snapshot (MULTI): counts and sums of the same finishes, and the growth counter
            # that every change of the group's models or images steps.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(key).hgetall(self._keys.group_sums(group_id)).get(growth_key)
                raw_fields, raw_sums, growth = await pipe.execute()
            fields, sums = decode(raw_fields), decode(raw_sums)
            record = group_record(group_id, fields, sums)
            due = self._due(record, fields)
            if due is None:
                return []
            if wants_summaries(due.event, record):
                record.images = await self.summaries(group_id)
            call, deliveries = self._announcement(record, fields, growth.decode() if growth else "", due)
            deadlines = self._keys.deadlines(self._keys.shard_of_id(group_id))
            if await self._outbox.run_with(ANNOUNCE_GROUP, call, [key, deadlines, growth_key]):
                return deliveries

    def _announcement(
        self, record: GroupRecord, fields: dict[str, str], growth: str, due: GroupDue
    ) -> tuple[Call, list[Delivery]]:
        """The announce script's call for ``due`` (``fields``: the hash ``record`` was read from,
        ``growth``: the growth counter read with it), and the delivery it queues, if the group has
        a webhook for the event."""
        terminal = record.status.is_terminal
        group = {
            "id": record.id, "seq": fields["seq"], "growth": growth, "strict": terminal,
            "read": [fields.get(name, "") for name in MARK_FIELDS],
            "marks": [str(part) for item in marks_fields(due.marks).items() for part in item],
            "done": terminal and record.deadline is not None,  # done in time: its deadline must not cancel later work
        }
        announcement = self._events.announce(fields["org"], record, due.event)
        if announcement is None:
            return Call(self._keys.shard_of_id(record.id), {"group": group}), []
        delivery, call = self._outbox.delivery_call(announcement, group=group)
        return call, [delivery]

    def _due(self, record: GroupRecord, fields: dict[str, str]) -> GroupDue | None:
        """The event the group owes now (``fields``: its hash, for what it last announced; the
        aggregate sums never decide it)."""
        return self._events.group_due(record, group_marks(fields), time.time())
