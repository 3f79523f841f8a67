"""The durable job queue: a Redis stream read through a consumer group.

At-least-once: a job stays pending until acknowledged; one whose worker died is claimed again
by another worker once it has been idle for the visibility timeout (``XAUTOCLAIM``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from core.keys import Keys

GROUP = "processors"


@dataclass(frozen=True)
class Job:
    """One image's models to run, or (``group_id`` set) a bulk run over a group's images."""

    id: str
    models: list[str]
    image_id: str = ""
    group_id: str = ""
    image_ids: tuple[str, ...] = ()


def _parse(entry_id: bytes, fields: dict[bytes, bytes]) -> Job:
    return Job(
        id=entry_id.decode(),
        models=json.loads(fields[b"models"]),
        image_id=fields.get(b"image", b"").decode(),
        group_id=fields.get(b"group", b"").decode(),
        image_ids=tuple(json.loads(fields.get(b"images", b"[]"))),
    )


class JobQueue:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    def add(self, pipe: Pipeline, image_id: str, models: list[str]) -> None:
        """Queue a job inside the caller's transaction, so it commits with the record."""
        pipe.xadd(self._keys.jobs, {"image": image_id, "models": json.dumps(models)})

    def add_bulk(self, pipe: Pipeline, group_id: str, image_ids: list[str], models: list[str]) -> None:
        """Queue one bulk job for many images of a group (run as a Ray Data pipeline)."""
        pipe.xadd(self._keys.jobs, {"group": group_id, "images": json.dumps(image_ids), "models": json.dumps(models)})

    async def touch(self, job_id: str, consumer: str) -> None:
        """Reset a long job's idle time so it is not reclaimed while its worker is alive."""
        await self._redis.xclaim(self._keys.jobs, GROUP, consumer, min_idle_time=0, message_ids=[job_id], justid=True)

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._keys.jobs, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int) -> list[Job]:
        """New jobs for ``consumer``; recreates the group if Redis lost it (restart, flush)."""
        try:
            reply = await self._redis.xreadgroup(
                GROUP, consumer, {self._keys.jobs: ">"}, count=count, block=block_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        return [_parse(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]

    async def claim_stale(self, consumer: str, min_idle_ms: int, count: int) -> list[Job]:
        """Take over jobs whose worker has held them longer than the visibility timeout."""
        try:
            _, entries, _ = await self._redis.xautoclaim(
                self._keys.jobs, GROUP, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.ensure_group()
            return []
        return [_parse(entry_id, fields) for entry_id, fields in entries if fields]

    async def ack(self, job_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self._keys.jobs, GROUP, job_id)
            pipe.xdel(self._keys.jobs, job_id)
            await pipe.execute()

    async def depth(self) -> int:
        return int(await self._redis.xlen(self._keys.jobs))
