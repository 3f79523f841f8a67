"""One job queue over every shard of the store (``core.keys``): a ``FairQueue`` per shard, one face.

An org's jobs live in its shard, beside its records, so an enqueue commits in the record's own
transaction (one Redis Cluster slot). A consumer serves every shard: a claim splits what it
wants over them (``core.shards.ShardRotation``); each lease step goes to the shard its
job id names (ids carry their org's hash, ``core.tokens.new_id``). Orgs are served fairly within
a shard by the queue's round, and shards by that split, so an org alone in its shard gets more
than one that shares a shard with many (more shards than busy orgs keep that rare).

With one shard (the default) this is that shard's ``FairQueue`` and nothing more.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.keys import Keys
from core.shards import ShardRotation, on_every_shard, pop_any, room_left
from core.store.fair_queue.dead_letters import DeadLetter, DeadLetters
from core.store.fair_queue.queue import Depth, FairQueue, Lease, QueuedJob, Reclaimed


class ShardedQueue:
    def __init__(self, redis: Redis, keys: Keys, queue: str, *, lease_s: float, max_attempts: int,
                 quantum: int = 1) -> None:
        self._redis = redis
        self._keys = keys
        self.shards = [FairQueue(redis, keys.job_queue(queue, shard), lease_s=lease_s, max_attempts=max_attempts,
                                 quantum=quantum) for shard in keys.all_shards]
        self.lease_ms = self.shards[0].lease_ms
        self._rotation = ShardRotation(len(self.shards))

    def of_org(self, org: str) -> FairQueue:
        return self.shards[self._keys.shard_of_org(org)]

    def shard_of_job(self, job_id: str) -> int:
        return self._keys.shard_of_id(job_id)

    def _by_shard(self, leases: Sequence[Lease]) -> dict[FairQueue, list[Lease]]:
        grouped: dict[FairQueue, list[Lease]] = defaultdict(list)
        for lease in leases:
            grouped[self.shards[self.shard_of_job(lease.job_id)]].append(lease)
        return grouped

    def enqueue(self, pipe: Pipeline, org: str, payload: Mapping[str, Any]) -> str:
        return self.of_org(org).enqueue(pipe, org, payload)

    def enqueue_many(self, pipe: Pipeline, org: str, payloads: Iterable[Mapping[str, Any]]) -> list[str]:
        return self.of_org(org).enqueue_many(pipe, org, payloads)

    async def claim(self, token: str, want: int, room: Mapping[str, int], default_room: int,
                    weights: Mapping[str, float] | None = None) -> list[QueuedJob]:
        """Up to ``want`` jobs from every shard (``FairQueue.claim``; an org's room applies in
        its own shard only, where all its jobs are)."""
        if want < 1:
            return []
        jobs: list[QueuedJob] = []

        async def take(shard: int, n: int) -> int:
            left = room_left(room, default_room, (job.org for job in jobs))
            got = await self.shards[shard].claim(token, n, left, default_room, weights)
            jobs.extend(got)
            return len(got)

        await self._rotation.take(want, take)
        return jobs

    async def renew(self, leases: Sequence[Lease], lease_s: float | None = None) -> list[Lease]:
        """The leases found lost. Every shard is renewed even when one fails; the failure is
        then raised (the heartbeat retries after a short backoff)."""
        parts = await on_every_shard("renew leases", [
            partial(queue.renew, own, lease_s) for queue, own in self._by_shard(leases).items()])
        return [lease for lost in parts for lease in lost]

    async def retry_later(self, lease: Lease, delay_s: float) -> bool:
        return await self.shards[self.shard_of_job(lease.job_id)].retry_later(lease, delay_s)

    async def ack(self, leases: Sequence[Lease]) -> int:
        """Acked in every shard that answers; a failure is raised after the others were acked
        (the caller's jobs come back: an acked job's retry does nothing)."""
        return sum(await on_every_shard("ack jobs", [partial(queue.ack, own)
                                                      for queue, own in self._by_shard(leases).items()]))

    async def release(self, leases: Sequence[Lease]) -> int:
        return sum(await on_every_shard("release jobs", [partial(queue.release, own)
                                                          for queue, own in self._by_shard(leases).items()]))

    async def reclaim(self, token: str, limit: int = 256) -> Reclaimed:
        parts = await on_every_shard("reclaim expired leases", [partial(queue.reclaim, token, limit)
                                                                 for queue in self.shards], partial_ok=True)
        return Reclaimed(sum(r.requeued for r in parts), [job for r in parts for job in r.exhausted])

    async def depth(self) -> Depth:
        queued: dict[str, int] = {}
        leased = 0
        for queue in self.shards:
            depth = await queue.depth()
            queued |= depth.queued  # an org is in one shard only
            leased += depth.leased
        return Depth(queued, leased)

    async def wait(self, timeout_s: float) -> bool:
        """Until some shard's enqueue leaves a wake token, or ``timeout_s``."""
        return await pop_any(self._redis, [queue.keys.wake for queue in self.shards], timeout_s)


class ShardedDeadLetters:
    """The dead letters of one queue over every shard. An entry is named ``<shard>/<stream id>``,
    so a requeue goes to the one stream that holds it."""

    def __init__(self, redis: Redis, queue: ShardedQueue) -> None:
        self._queue = queue
        self.shards = [DeadLetters(redis, q.keys) for q in queue.shards]

    async def bury(self, lease: Lease, reason: str) -> str | None:
        shard = self._queue.shard_of_job(lease.job_id)
        entry = await self.shards[shard].bury(lease, reason)
        return None if entry is None else f"{shard}/{entry}"

    async def list(self, count: int = 50, before: str = "+") -> list[DeadLetter]:
        """Newest first across the shards (equal stream ids, which separate streams mint, in
        falling shard order); page on with ``before`` = the last entry's name."""
        cursor = (len(self.shards), "+") if before == "+" else parse_entry(before)
        if cursor is None:
            return []
        letters = []
        for shard, dead in enumerate(self.shards):
            # a shard below the cursor's comes after it on an equal id: its bound is inclusive
            page = await dead.list(count, cursor[1], inclusive=shard < cursor[0])
            letters += [(shard, letter) for letter in page]
        letters.sort(key=lambda pair: (stream_order(pair[1].entry), pair[0]), reverse=True)
        return [named(shard, letter) for shard, letter in letters[:count]]

    async def count(self) -> int:
        return sum([await dead.count() for dead in self.shards])

    async def requeue(self, entry: str) -> str | None:
        """The requeued job's id; None for an entry that names no dead letter (or is malformed)."""
        found = self._find(entry)
        return None if found is None else await found[0].requeue(found[1])

    async def get(self, entry: str) -> DeadLetter | None:
        found = self._find(entry)
        return None if found is None else await found[0].get(found[1])

    def _find(self, entry: str) -> tuple[DeadLetters, str] | None:
        parsed = parse_entry(entry)
        if parsed is None or parsed[0] >= len(self.shards):
            return None
        return self.shards[parsed[0]], parsed[1]


def named(shard: int, letter: DeadLetter) -> DeadLetter:
    return DeadLetter(f"{shard}/{letter.entry}", letter.job_id, letter.org, letter.payload, letter.attempts,
                      letter.reason)


def parse_entry(entry: str) -> tuple[int, str] | None:
    """``<shard>/<stream id>`` as its two parts; None for anything else."""
    shard, sep, stream_id = entry.partition("/")
    ms, dash, seq = stream_id.partition("-")
    if not sep or not shard.isdigit() or not ms.isdigit() or (dash and not seq.isdigit()):
        return None
    return int(shard), stream_id


def stream_order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)
