"""The durable job queue, fair across orgs: per-org FIFO queues served by deficit round-robin.

One Redis layout (``keys.QueueKeys``) and one Lua script per operation (``lua/``), so every step
is atomic and every replica claims through the same round, which makes the fairness global:

* ``enqueue`` / ``enqueue_many`` (inside the record's transaction) append jobs to their org's
  queue, put the org in the round if it was not, and leave a wake token for idle replicas;
* ``claim`` takes up to ``want`` jobs by deficit round-robin (each org ``quantum x weight`` per
  visit; the caller passes the weights, ``core.store.weights``), never more of one org than the
  caller's ``room`` for it, and leases each in the caller's name; every claim counts as an attempt;
* a ``Lease`` names one claim (the claimant's token and the job's fence, a counter every lease
  granted moves on: a fencing token), and every later step is checked against it: ``renew`` is
  the heartbeat (one call per replica renews every lease it holds, and reports those taken over,
  even by the same replica claiming the job again after a stall, so the stale run stops and
  cannot ack the job from under the new one);
* ``ack`` finishes a job, ``release`` gives unstarted ones back (no attempt counted),
  ``retry_later`` lets a failed one come back after a pause;
* ``reclaim`` returns expired leases to the front of their org's queue, and hands back the jobs
  that have used up ``max_attempts``: the caller fails their image and ``bury``s them in the
  dead-letter stream (``dead_letters.DeadLetters``).

At-least-once: a job is deleted only by ``ack`` or ``bury``; work must be idempotent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core.keys import QueueKeys, org_hash
from core.store.fair_queue.scripts import Scripts
from core.tokens import new_id

ENQUEUE_CHUNK = 1_000  # jobs per enqueue script call (Lua's unpack has a stack limit near 8,000)


@dataclass(frozen=True)
class Lease:
    """One claim of one job; ``owner`` is what the claim wrote (claimant token and fence)."""

    job_id: str
    owner: str

    def pair(self) -> list[str]:
        """As the scripts take it: ``[id, owner]``."""
        return [self.job_id, self.owner]


@dataclass(frozen=True)
class QueuedJob:
    """A claimed job: its payload (what to run) and how many claims it has had, this one included."""

    id: str
    org: str
    payload: dict[str, Any]
    attempts: int
    enqueued_ms: int
    owner: str

    @property
    def lease(self) -> Lease:
        return Lease(self.id, self.owner)


@dataclass(frozen=True)
class Reclaimed:
    requeued: int  # expired leases put back in their queues
    exhausted: list[QueuedJob]  # past max_attempts, now leased to the reclaimer's token: fail and bury


@dataclass(frozen=True)
class EnqueueStep:
    """An enqueue to run inside another script: its queue keys and named arguments."""

    keys: list[str]
    args: dict[str, Any]

    @property
    def job_ids(self) -> list[str]:
        return [job_id for job_id, _ in self.args["jobs"]]


@dataclass(frozen=True)
class Depth:
    queued: dict[str, int]  # per org, orgs with queued jobs only
    leased: int

    @property
    def total(self) -> int:
        return sum(self.queued.values())


def _jobs(rows: list[list[Any]]) -> list[QueuedJob]:
    return [QueuedJob(id=r[0], org=r[1], payload=json.loads(r[2]), attempts=int(r[3]), enqueued_ms=int(r[4]),
                      owner=r[5]) for r in rows]


def _pairs(leases: Sequence[Lease]) -> list[list[str]]:
    return [lease.pair() for lease in leases]


def new_token() -> str:
    """A claimant's token: one per replica (or per reclaimer), never reused."""
    return uuid.uuid4().hex


class FairQueue:
    def __init__(
        self, redis: Redis, keys: QueueKeys, *, lease_s: float, max_attempts: int, quantum: int = 1
    ) -> None:
        self._redis = redis
        self.keys = keys
        self.lease_ms = int(lease_s * 1000)
        self.max_attempts = max_attempts
        self.quantum = quantum
        self._scripts = Scripts(redis)

    def enqueue(self, pipe: Pipeline, org: str, payload: Mapping[str, Any]) -> str:
        """Queue a job inside the caller's transaction; returns its id."""
        return self.enqueue_many(pipe, org, [payload])[0]

    def enqueue_many(self, pipe: Pipeline, org: str, payloads: Iterable[Mapping[str, Any]]) -> list[str]:
        """Queue many jobs of one org inside the caller's transaction (a group's images): one
        script call per ``ENQUEUE_CHUNK`` jobs; returns their ids, in order."""
        ids: list[str] = []
        for step in self.enqueue_steps(org, payloads):
            Scripts.queue(pipe, "enqueue", step.keys, **step.args)
            ids += step.job_ids
        return ids

    def enqueue_steps(self, org: str, payloads: Iterable[Mapping[str, Any]]) -> list[EnqueueStep]:
        """``payloads`` as enqueue steps of at most ``ENQUEUE_CHUNK`` jobs each, in order."""
        batch = list(payloads)
        return [self.enqueue_step(org, batch[start:start + ENQUEUE_CHUNK])
                for start in range(0, len(batch), ENQUEUE_CHUNK)]

    def enqueue_step(self, org: str, payloads: Sequence[Mapping[str, Any]]) -> EnqueueStep:
        """The keys and named arguments of an ``enqueue(...)`` of ``payloads`` (at most
        ``ENQUEUE_CHUNK``), for a script composed on the queue's library (``with_queue``) that
        writes the jobs with what needs them."""
        k = self.keys
        jobs = [[new_id("job", org_hash(org)), json.dumps(p)] for p in payloads]
        return EnqueueStep([k.org_queue(org), k.ring, k.wake], {"base": k.base, "org": org, "jobs": jobs})

    async def claim(self, token: str, want: int, room: Mapping[str, int], default_room: int,
                    weights: Mapping[str, float] | None = None) -> list[QueuedJob]:
        """Up to ``want`` jobs, fairly across orgs (each org's share scaled by ``weights[org]``,
        else 1), at most ``room[org]`` (else ``default_room``) of each org, leased to ``token``
        for the lease time."""
        if want < 1:
            return []
        k = self.keys
        reply = await self._scripts.run(
            "claim", [k.ring, k.deficits, k.leases, k.visiting, k.wake], base=k.base, want=want,
            room=dict(room), default_room=default_room, weights=dict(weights or {}), quantum=self.quantum,
            lease_ms=self.lease_ms, token=token,
        )
        return _jobs(json.loads(reply))

    async def renew(self, leases: Sequence[Lease], lease_s: float | None = None) -> list[Lease]:
        """Extend the leases that are still their job's current one; returns the others (lost)."""
        if not leases:
            return []
        lease_ms = self.lease_ms if lease_s is None else int(lease_s * 1000)
        reply = await self._scripts.run("renew", [self.keys.leases], base=self.keys.base, leases=_pairs(leases),
                                        lease_ms=lease_ms)
        return [Lease(job_id, owner) for job_id, owner in json.loads(reply)]

    async def retry_later(self, lease: Lease, delay_s: float) -> bool:
        """A job that failed in an unexpected way: its lease now ends in ``delay_s``, and the
        reclaimer puts it back then (or buries it, past its attempts). False if the lease was lost."""
        return not await self.renew([lease], lease_s=delay_s)

    async def ack(self, leases: Sequence[Lease]) -> int:
        """Done: delete the jobs whose lease is still current; returns how many."""
        if not leases:
            return 0
        return int(await self._scripts.run("ack", [self.keys.leases], base=self.keys.base, leases=_pairs(leases)))

    async def release(self, leases: Sequence[Lease]) -> int:
        """Give unstarted jobs back (shutdown): front of their queues, no attempt counted."""
        if not leases:
            return 0
        k = self.keys
        return int(await self._scripts.run("release", [k.leases, k.ring, k.wake], base=k.base,
                                           leases=_pairs(leases)))

    async def reclaim(self, token: str, limit: int = 256) -> Reclaimed:
        """Expired leases back to their queues; jobs past ``max_attempts`` leased to ``token``."""
        k = self.keys
        reply = json.loads(await self._scripts.run(
            "reclaim", [k.leases, k.ring, k.wake], base=k.base, limit=limit, max_attempts=self.max_attempts,
            token=token, lease_ms=self.lease_ms,
        ))
        return Reclaimed(requeued=int(reply[0]), exhausted=_jobs(reply[1]) if len(reply) > 1 else [])

    async def depth(self) -> Depth:
        """Queued jobs per org and leased jobs: the backlog autoscaling and metrics report."""
        reply = json.loads(await self._scripts.run("depth", [self.keys.ring, self.keys.leases], base=self.keys.base))
        return Depth(queued={org: int(n) for org, n in (reply[1] if len(reply) > 1 else [])}, leased=int(reply[0]))

    async def wait(self, timeout_s: float) -> bool:
        """Block until an enqueue (or requeue) leaves a wake token, or ``timeout_s``."""
        return bool(await self._redis.blpop([self.keys.wake], timeout=timeout_s))
