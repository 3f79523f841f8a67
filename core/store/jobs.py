"""The store's two job queues: online images and bulk groups, each a fair queue per org.

A record's job is enqueued inside the record's own transaction (``add`` / ``add_bulk`` queue an
EVAL on the caller's pipeline), so accepted work is durable before the caller answers. Online
image jobs go to the ``online`` queue, which the processor's intake claims; a bulk group's job
goes to the ``bulk`` queue, claimed only by the processor's bulk capacity (``max_bulk_runs``),
so a Ray Data run never holds an online slot. Both are ``core.store.fair_queue.ShardedQueue``:
in each of the store's shards a ``FairQueue`` (deficit round-robin over orgs, leases renewed by a
heartbeat, bounded attempts, dead letters).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.keys import Keys
from core.schemas import ErrorCode
from core.settings import Settings
from core.store.fair_queue import ShardedDeadLetters, ShardedQueue
from core.store.fair_queue.queue import EnqueueStep


class QueueName(StrEnum):
    ONLINE = "online"
    BULK = "bulk"


@dataclass(frozen=True)
class Job:
    """One image's models to run, or (``group_id`` set) a bulk run over a group's images."""

    models: list[str]
    image_id: str = ""
    group_id: str = ""
    image_ids: tuple[str, ...] = field(default=())

    def payload(self) -> dict[str, Any]:
        if self.group_id:  # lua/link_group.lua writes this payload too, for a new bulk group
            return {"group": self.group_id, "images": list(self.image_ids), "models": self.models}
        return {"image": self.image_id, "models": self.models}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Job:
        return cls(models=list(payload["models"]), image_id=payload.get("image", ""),
                   group_id=payload.get("group", ""), image_ids=tuple(payload.get("images", ())))

    @property
    def images(self) -> tuple[str, ...]:
        """Every image the job is about."""
        return self.image_ids if self.group_id else (self.image_id,)


class Jobs:
    """The online and bulk queues of one key prefix, and their dead letters."""

    def __init__(self, redis: Redis, keys: Keys, settings: Settings) -> None:
        def queue(name: QueueName) -> ShardedQueue:
            return ShardedQueue(redis, keys, name, lease_s=settings.job_lease_s,
                                max_attempts=settings.max_job_attempts, quantum=settings.queue_quantum)

        self._redis = redis
        self._keys = keys
        self.queues = {name: queue(name) for name in QueueName}
        self.dead = {name: ShardedDeadLetters(redis, q) for name, q in self.queues.items()}

    @property
    def online(self) -> ShardedQueue:
        return self.queues[QueueName.ONLINE]

    @property
    def bulk(self) -> ShardedQueue:
        return self.queues[QueueName.BULK]

    def add(self, pipe: Pipeline, org: str, image_id: str, models: list[str]) -> None:
        """Queue an image's job inside the caller's transaction, so it commits with the record."""
        self.online.enqueue(pipe, org, Job(models=models, image_id=image_id).payload())

    def add_step(self, org: str, image_id: str, models: list[str]) -> EnqueueStep:
        """An image's job for a script that writes it with the record (``ImageStore.create``)."""
        return self.online.of_org(org).enqueue_step(org, [Job(models=models, image_id=image_id).payload()])

    def group_steps(self, org: str, image_ids: list[str], models: list[str]) -> list[EnqueueStep]:
        """A new small group's jobs, one per image, in steps of at most ``ENQUEUE_CHUNK``, for
        its link script (``lua/link_group.lua``). Every step names the same queue keys."""
        return self.online.of_org(org).enqueue_steps(org, (Job(models=models, image_id=i).payload() for i in image_ids))

    def bulk_group_step(self, org: str) -> EnqueueStep:
        """The queue keys and the job id of a new bulk group's job, whose payload its link
        script writes from the group's image list (``lua/link_group.lua``)."""
        return self.bulk.of_org(org).enqueue_step(org, [{}])

    def add_many(self, pipe: Pipeline, org: str, image_ids: list[str], models: list[str]) -> None:
        """Queue one job per image (a small group's), in few script calls."""
        self.online.enqueue_many(pipe, org, (Job(models=models, image_id=i).payload() for i in image_ids))

    def add_bulk(self, pipe: Pipeline, org: str, group_id: str, image_ids: list[str], models: list[str]) -> None:
        """Queue one bulk job for many images of a group (run as a Ray Data pipeline)."""
        self.bulk.enqueue(pipe, org, Job(models=models, group_id=group_id, image_ids=tuple(image_ids)).payload())

    async def counts(self) -> dict[str, int]:
        """Jobs queued, running (leased) and dead, both queues together: the operator's figures."""
        depths = [await queue.depth() for queue in self.queues.values()]
        return {"queued": sum(d.total for d in depths), "running": sum(d.leased for d in depths),
                "deadLetters": sum([await dead.count() for dead in self.dead.values()])}

    async def depth(self) -> int:
        """Jobs queued or running, both queues together."""
        counts = await self.counts()
        return counts["queued"] + counts["running"]

    async def requeue_dead(self, queue: QueueName, entry: str) -> str | None:
        """An operator's second chance for a dead letter: its images lose the
        ``attempts_exhausted`` failure the engine gave them (so they run again and are announced
        anew), and the job goes to the back of its org's queue with fresh attempts. Returns the
        job id, or None when there is no such entry."""
        letter = await self.dead[queue].get(entry)
        if letter is None:
            return None
        job = Job.from_payload(letter.payload)
        for image_id in job.images:
            key = self._keys.image(image_id)
            error = await self._redis.hget(key, "error")
            if error and json.loads(error).get("code") == ErrorCode.ATTEMPTS_EXHAUSTED:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hdel(key, "error")
                    pipe.hincrby(key, "seq", 1)
                    await pipe.execute()
        return await self.dead[queue].requeue(entry)
