"""Deadlines: the ZSET of images and groups with one, swept by the processors.

A submission's ``deadline`` is stored on its records (``ImageRecord.deadline``, checked by the
engine before work starts and before each model call) and here, so that a queued image whose
deadline passes is canceled and announced on time even when nothing is processing it. A group
is swept as one entry (its images share its deadline); an image that finishes leaves the ZSET.
"""

from __future__ import annotations

from functools import partial

from redis.asyncio import Redis

from core.keys import Keys
from core.schemas import ErrorCode, ErrorInfo
from core.shards import on_every_shard
from core.store.groups import GroupStore
from core.store.images import ImageStore
from core.store.records import GROUP_ID_PREFIX

DEADLINE_ERROR = ErrorInfo(code=ErrorCode.DEADLINE, message="the deadline passed before the work was done")


class Deadlines:
    def __init__(self, redis: Redis, keys: Keys, images: ImageStore, groups: GroupStore) -> None:
        self._redis = redis
        self._keys = keys
        self._images = images
        self._groups = groups

    async def due(self, now: float, limit: int = 100) -> list[str]:
        """Ids of the images and groups whose deadline is at or before ``now`` (Unix s), up to
        ``limit`` from each shard's sweep."""
        reads = [partial(self._redis.zrangebyscore, self._keys.deadlines(shard), "-inf", now, start=0, num=limit)
                 for shard in self._keys.all_shards]
        answered = await on_every_shard("read due deadlines", reads, partial_ok=True)
        return [row.decode() for rows in answered for row in rows]

    async def expire(self, resource_id: str) -> None:
        """Cancel what is left of an image or group with code ``deadline`` (a finished one is
        left as it is), then take it off the sweep. Safe to repeat on any replica."""
        if resource_id.startswith(GROUP_ID_PREFIX + "_"):
            await self._groups.cancel(resource_id, error=DEADLINE_ERROR)
        else:
            await self._images.cancel(resource_id, error=DEADLINE_ERROR)
        await self._redis.zrem(self._keys.deadlines(self._keys.shard_of_id(resource_id)), resource_id)

    async def sweep(self, now: float, limit: int = 100) -> int:
        """Expire everything due; returns how many ids were expired."""
        due = await self.due(now, limit)
        for resource_id in due:
            await self.expire(resource_id)
        return len(due)
