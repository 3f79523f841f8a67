"""Credit-based intake: a replica claims only the jobs it has room for, and keeps their leases.

The backlog stays in Redis: a replica holds at most ``max_in_flight`` jobs, at most
``org_max_in_flight`` of one org (the queue's claim takes that as each org's room), so a
100,000-job backlog never sits in a replica's memory and one org cannot take every slot. Three
supervised loops (``core.supervise``) run beside the jobs, four with a governor:

* **intake**: when there is room, claim (fairly across orgs, in the queue's round, each org's
  share scaled by ``weights()``, the replica's copy of the operator's weights) and start one
  task per job; with nothing queued, wait on the queue's wake token (an enqueue claims within
  milliseconds) or a freed slot. With a ``governor`` (``deployments.engine.governor``), while
  more than one org has had work here within ``COMPETING_S``, one org may hold only what the
  governor's cap allows now, narrowed while the replica's loop lags, so a heavy org does not
  queue every step of a light org's image behind hundreds of its own; an org alone keeps the
  full ``org_max_in_flight`` (nobody waits behind it, and its batches stay full);
* **heartbeat**: every lease / 3, one call renews every lease the replica holds; a lease found
  lost (taken over after a stall) cancels that run here, since another claim now runs the job,
  perhaps on this very replica: the replica holds claims (``Lease``), not job ids, so a job it
  claims again after its own stall is a second entry, and each run ends only its own;
* **reclaimer**: every ``reclaim_interval_s``, expired leases (a dead replica's, a crashed app's)
  go back to the front of their queues, so their work restarts within lease + interval; jobs
  past their attempts go to ``exhausted`` (which fails the image and announces it) and are then
  buried as dead letters. It also refreshes the backlog figure reported for autoscaling.

A job's task runs ``run(job)`` and acks. Acks of jobs that finish while one is on its way to
their shard leave together, in one call (``core.coalesce``, one per shard: none waits when the
replica is idle, a busy one acks many jobs per round trip, a slow master delays only its own).
An unexpected exception is logged with the job and the job comes back after ``retry_delay_s``
(bounded by its attempts). ``stop`` gives the jobs it
still holds back at once (no attempt counted), so another replica need not wait out a lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from redis.exceptions import RedisError

from core.coalesce import Coalescer
from core.store.fair_queue import (
    DeadLetters,
    FairQueue,
    Lease,
    QueuedJob,
    ShardedDeadLetters,
    ShardedQueue,
    new_token,
)
from core.supervise import supervise, working_on
from deployments.engine.governor import OrgCapGovernor

log = logging.getLogger("sightwire.engine.intake")
STOP_TIMEOUT_S = 10.0  # a stop never waits longer for its loops and jobs to end

EXPECTED = (RedisError, OSError, TimeoutError)  # the store being away: logged in one line, retried
DEAD_REASON = "attempts"
COMPETING_S = 10.0  # an org that had a job claimed this recently competes for the replica's loop


@dataclass(frozen=True)
class IntakeLimits:
    max_in_flight: int
    org_max_in_flight: int
    reclaim_interval_s: float
    idle_s: float = 1.0  # the longest an idle replica waits before looking again
    retry_delay_s: float = 5.0  # a job that failed unexpectedly comes back after this


class Intake:
    def __init__(
        self,
        name: str,
        queue: FairQueue | ShardedQueue,
        dead: DeadLetters | ShardedDeadLetters,
        limits: IntakeLimits,
        run: Callable[[QueuedJob], Awaitable[None]],
        exhausted: Callable[[QueuedJob], Awaitable[None]],
        logger: logging.Logger = log,
        weights: Callable[[], Mapping[str, float]] = dict,
        governor: OrgCapGovernor | None = None,
    ) -> None:
        self.name = name
        self.queue = queue
        self.dead = dead
        self.limits = limits
        self._run = run
        self._exhausted = exhausted
        self.log = logger
        self._weights = weights
        self.governor = governor
        self.token = new_token()
        self.held: dict[Lease, asyncio.Task[None]] = {}  # each claim -> its run
        self._orgs: Counter[str] = Counter()
        self._lease_orgs: dict[Lease, str] = {}
        self._claimed_at: dict[str, float] = {}  # org -> when this replica last claimed one of its jobs
        self._room = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._acks: dict[int, Coalescer[Lease, None]] = {}  # one per shard: a slow master holds up only its own
        self.backlog = 0  # jobs queued in Redis, as last seen by the reclaimer

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        steps = {"intake": self._intake, "heartbeat": self._heartbeat, "reclaimer": self._reclaim}
        if self.governor is not None:
            steps["governor"] = self._govern
        self._loops = [
            loop.create_task(supervise(f"{self.name} {what}", step, expected=EXPECTED, logger=self.log),
                             name=f"{self.name}-{what}")
            for what, step in steps.items()
        ]

    async def stop(self) -> None:
        """Stop the loops, cancel the jobs still running and give them back to the queue."""
        for task in self._loops:
            task.cancel()
        jobs = list(self.held)
        for task in self.held.values():
            task.cancel()
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await asyncio.gather(*self._loops, *self.held.values(), return_exceptions=True)
        except TimeoutError:  # something awaited a reply that never came: say so, and go on
            self.log.error("%s: loops or jobs still running %gs after stop", self.name, STOP_TIMEOUT_S)
        for acks in self._acks.values():
            await acks.aclose()
        if jobs:
            await self.queue.release(jobs)

    # -- the loops -------------------------------------------------------------------------

    async def _intake(self) -> None:
        want = self.limits.max_in_flight - len(self.held)
        if want <= 0:
            self._room.clear()
            await self._room.wait()
            return
        weights = self._weights()
        cap = self.org_cap
        caps = self._org_caps(cap, weights)
        room = {org: caps.get(org, cap) - self._orgs[org] for org in set(self._orgs) | set(caps)}
        self._room.clear()  # before the claim: a job that ends meanwhile wakes the next one
        jobs = await self.queue.claim(self.token, want, room, cap, weights)
        for job in jobs:
            self._start(job)
        if not jobs:
            await self._idle()

    async def _idle(self) -> None:
        """Until an enqueue leaves a wake token, a held job finishes (since the claim began), or
        ``idle_s`` passes."""
        woken = asyncio.ensure_future(self.queue.wait(self.limits.idle_s))
        freed = asyncio.ensure_future(self._room.wait())
        try:
            async with asyncio.timeout(self.limits.idle_s + 5):
                await asyncio.wait({woken, freed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (woken, freed):
                waiter.cancel()
            await asyncio.gather(woken, freed, return_exceptions=True)

    def held_of(self, org: str) -> int:
        """How many of ``org``'s jobs this replica holds."""
        return self._orgs[org]

    @property
    def org_cap(self) -> int:
        """What one org may hold now: the governor's cap while orgs compete, else ``org_max_in_flight``."""
        if self.governor is None or not self._competing():
            return self.limits.org_max_in_flight
        return self.governor.cap

    def _org_caps(self, cap: int, weights: Mapping[str, float]) -> dict[str, int]:
        """The weighted orgs' own caps while the governor narrows ``cap``: ``cap x weight`` (within
        1 … ``org_max_in_flight``), so an org of weight 2 still holds twice another's share."""
        ceiling = self.limits.org_max_in_flight
        if cap >= ceiling:
            return {}
        return {org: min(ceiling, max(1, round(cap * weight))) for org, weight in weights.items()}

    def _competing(self) -> bool:
        since = asyncio.get_running_loop().time() - COMPETING_S
        for org in [org for org, at in self._claimed_at.items() if at < since]:
            del self._claimed_at[org]
        return len(self._claimed_at) > 1

    async def _govern(self) -> None:
        """One lag sample; a cap that grew frees room a waiting intake may claim."""
        assert self.governor is not None
        lag = await self.governor.sample()
        cap = self.governor.cap
        caps = self._org_caps(cap, self._weights())
        binding = any(n >= caps.get(org, cap) for org, n in self._orgs.items())  # some org at its own cap
        self.governor.observe(lag, binding=binding)
        if self.governor.cap > cap:
            self._room.set()

    async def _heartbeat(self) -> None:
        """Renew, then wait: after a failed renewal the supervisor's short backoff, not a whole
        period, comes before the next try."""
        for lease in await self.queue.renew(list(self.held)):
            task = self.held.get(lease)
            if task is not None:
                self.log.warning("%s: lease of job %s was taken over; stopping it here", self.name, lease.job_id)
                task.cancel()
        await asyncio.sleep(self.queue.lease_ms / 3000)

    async def _reclaim(self) -> None:
        reclaimed = await self.queue.reclaim(self.token)
        if reclaimed.requeued:
            self.log.info("%s: %d expired leases back in their queues", self.name, reclaimed.requeued)
        for job in reclaimed.exhausted:
            with working_on(job=job.id, org=job.org, attempts=job.attempts):
                await self._exhausted(job)
                await self.dead.bury(job.lease, DEAD_REASON)
            self.log.warning("%s: job %s of %s used up %d attempts: dead letter", self.name, job.id, job.org,
                             job.attempts)
        self.backlog = (await self.queue.depth()).total
        await asyncio.sleep(self.limits.reclaim_interval_s)

    # -- one job ---------------------------------------------------------------------------

    def _start(self, job: QueuedJob) -> None:
        self._claimed_at[job.org] = asyncio.get_running_loop().time()
        self._orgs[job.org] += 1
        self._lease_orgs[job.lease] = job.org
        self.held[job.lease] = asyncio.get_running_loop().create_task(self._job(job), name=f"job-{job.id}")

    async def _job(self, job: QueuedJob) -> None:
        try:
            with working_on(job=job.id, org=job.org, attempt=job.attempts):
                await self._run(job)
            await self._acker(job.lease).submit(job.lease)
        except asyncio.CancelledError:
            raise  # lease lost, or the replica is stopping (``stop`` gives the job back)
        except Exception:
            self.log.exception("%s: job %s failed; it comes back in %gs", self.name, job.id, self.limits.retry_delay_s)
            try:
                await self.queue.retry_later(job.lease, self.limits.retry_delay_s)
            except EXPECTED as exc:  # its lease then simply expires
                self.log.warning("%s: could not schedule the retry of %s: %s", self.name, job.id, exc)
        finally:
            self._forget(job.lease)

    def _acker(self, lease: Lease) -> Coalescer[Lease, None]:
        shard = self.queue.shard_of_job(lease.job_id) if isinstance(self.queue, ShardedQueue) else 0
        if shard not in self._acks:
            self._acks[shard] = Coalescer(self._ack_many, max_in_flight=1)
        return self._acks[shard]

    async def _ack_many(self, leases: list[Lease]) -> list[None]:
        await self.queue.ack(leases)
        return [None] * len(leases)

    def _forget(self, lease: Lease) -> None:
        if self.held.pop(lease, None) is not None:
            org = self._lease_orgs.pop(lease)
            self._orgs[org] -= 1
            if not self._orgs[org]:
                del self._orgs[org]
            self._room.set()
