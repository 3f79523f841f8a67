"""The engine's intake on a real redis-server: credit, per-org room, heartbeats, reclaim, dead letters,
and supervision of each loop (a failing job, a failing callback, Redis going away)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
from redis.asyncio import Redis

from core.store.fair_queue import DeadLetters, FairQueue, Lease, QueuedJob, QueueKeys, new_token
from core.tokens import new_id
from deployments.engine.intake import Intake, IntakeLimits
from serve_app.local import RedisServer
from tests.support.queues import fill, image_of


class Work:
    """The jobs' work: records each run; ``gate`` holds them until opened; ``fail`` raises once
    for the named images."""

    def __init__(self) -> None:
        self.runs: Counter[str] = Counter()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: set[str] = set()
        self.exhausted: list[QueuedJob] = []
        self.exhausted_fails = 0

    async def run(self, job: QueuedJob) -> None:
        image = job.payload["image"]
        self.runs[image] += 1
        await self.gate.wait()
        if image in self.fail:
            self.fail.discard(image)
            raise ValueError(f"poison {image}")

    async def on_exhausted(self, job: QueuedJob) -> None:
        if self.exhausted_fails:
            self.exhausted_fails -= 1
            raise RuntimeError("store write failed")
        self.exhausted.append(job)


def limits(**overrides: float) -> IntakeLimits:
    values = {"max_in_flight": 8, "org_max_in_flight": 8, "reclaim_interval_s": 0.1, "idle_s": 0.5,
              "retry_delay_s": 0.1} | overrides
    return IntakeLimits(**values)  # type: ignore[arg-type]


def make(redis: Redis, queue_keys: QueueKeys, work: Work, lease_s: float = 5.0, max_attempts: int = 3,
         **overrides: float) -> Intake:
    queue = FairQueue(redis, queue_keys, lease_s=lease_s, max_attempts=max_attempts)
    return Intake("test", queue, DeadLetters(redis, queue_keys), limits(**overrides), work.run, work.on_exhausted)


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_replica_holds_no_more_than_its_credit_and_the_backlog_stays_queued(
    redis: Redis, queue_keys: QueueKeys
) -> None:
    work = Work()
    work.gate.clear()
    intake = make(redis, queue_keys, work, max_in_flight=4)
    await fill(redis, intake.queue, "org_a", 20)
    intake.start()
    try:
        await until(lambda: len(intake.held) == 4)
        await asyncio.sleep(0.3)
        assert len(intake.held) == 4 and (await intake.queue.depth()).total == 16
        work.gate.set()
        await until(lambda: len(work.runs) == 20 and not intake.held)
        assert set(work.runs.values()) == {1}
        depth = await intake.queue.depth()
        assert depth.total == 0 and depth.leased == 0  # every job acked
    finally:
        await intake.stop()


class CountingAcks(FairQueue):
    """The real queue, recording how many leases each ack call carried."""

    calls: list[int]
    fail_first = False

    async def ack(self, leases: Sequence[Lease]) -> int:
        self.calls.append(len(leases))
        if self.fail_first and len(self.calls) == 1:
            raise ConnectionError("Redis went away")
        return await super().ack(leases)


async def test_jobs_that_finish_together_are_acked_in_one_call(redis: Redis, queue_keys: QueueKeys) -> None:
    """Before: one ack round trip per job, eight for eight jobs ending at once."""
    work = Work()
    work.gate.clear()
    queue = CountingAcks(redis, queue_keys, lease_s=5.0, max_attempts=3)
    queue.calls = []
    intake = Intake("test", queue, DeadLetters(redis, queue_keys), limits(), work.run, work.on_exhausted)
    await fill(redis, queue, "org_a", 8)
    intake.start()
    try:
        await until(lambda: len(intake.held) == 8)
        work.gate.set()  # all eight end in the same turn of the loop
        await until(lambda: not intake.held)
        assert sum(queue.calls) == 8 and len(queue.calls) <= 2, queue.calls
        depth = await queue.depth()
        assert depth.total == 0 and depth.leased == 0  # every job acked
    finally:
        await intake.stop()


async def test_the_jobs_of_a_failed_ack_call_come_back_and_are_acked_later(
    redis: Redis, queue_keys: QueueKeys
) -> None:
    work = Work()
    work.gate.clear()
    queue = CountingAcks(redis, queue_keys, lease_s=5.0, max_attempts=3)
    queue.calls, queue.fail_first = [], True
    intake = Intake("test", queue, DeadLetters(redis, queue_keys), limits(), work.run, work.on_exhausted)
    await fill(redis, queue, "org_a", 4)
    intake.start()
    try:
        await until(lambda: len(intake.held) == 4)
        work.gate.set()
        await until(lambda: bool(queue.calls) and sum(queue.calls) >= 4 + queue.calls[0] and not intake.held)
        depth = await queue.depth()
        assert depth.total == 0 and depth.leased == 0
        # each job of the failed call ran again (its retry), the others once
        assert sorted(work.runs.values()) == [1] * (4 - queue.calls[0]) + [2] * queue.calls[0]
    finally:
        await intake.stop()


async def test_one_org_holds_at_most_its_share_of_a_replica(redis: Redis, queue_keys: QueueKeys) -> None:
    work = Work()
    work.gate.clear()
    intake = make(redis, queue_keys, work, max_in_flight=8, org_max_in_flight=3)
    await fill(redis, intake.queue, "org_a", 10)
    intake.start()
    try:
        await until(lambda: len(intake.held) == 3)
        await fill(redis, intake.queue, "org_b", 1)  # a single image arriving behind the backlog
        await until(lambda: work.runs["org_b/0"] == 1, timeout_s=2)
        assert len(intake.held) == 4
    finally:
        work.gate.set()
        await intake.stop()


async def test_a_slow_job_with_a_live_heartbeat_is_not_run_twice(redis: Redis, queue_keys: QueueKeys) -> None:
    work = Work()
    work.gate.clear()
    first, second = make(redis, queue_keys, work, lease_s=0.3), make(redis, queue_keys, work, lease_s=0.3)
    await fill(redis, first.queue, "org_a", 1)
    first.start()
    await until(lambda: work.runs["org_a/0"] == 1)
    second.start()
    try:
        await asyncio.sleep(1.2)  # four leases long; both reclaimers look every 0.1 s
        assert work.runs["org_a/0"] == 1
        work.gate.set()
        await until(lambda: not first.held)
        assert work.runs["org_a/0"] == 1 and (await first.queue.depth()).leased == 0
    finally:
        await first.stop()
        await second.stop()


# Ends a job's lease at once while the claim ``ARGV[2]`` still holds it; 1 if it did.
EXPIRE_IF_OWNED = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 1
"""


async def test_a_job_claimed_again_by_its_own_replica_after_a_stall_runs_once_and_frees_its_room(
    redis: Redis, queue_keys: QueueKeys
) -> None:
    """A stall past the lease (a blocked event loop) lets this replica's reclaimer requeue its own
    job and its intake claim it again. The stale run is stopped, cannot ack the job from under the
    new run, and leaves the org's room as it was: two later jobs of the org are both taken."""
    work = Work()
    work.gate.clear()
    intake = make(redis, queue_keys, work, lease_s=1.5, org_max_in_flight=2, reclaim_interval_s=0.05)
    [job_id] = await fill(redis, intake.queue, "org_a", 1)
    intake.start()
    try:
        await until(lambda: work.runs["org_a/0"] == 1)
        [(stale, stale_run)] = intake.held.items()
        for _ in range(500):  # the stall: the first claim's lease ends before a heartbeat renews it
            if not await redis.eval(EXPIRE_IF_OWNED, 2, queue_keys.job(job_id), queue_keys.leases, job_id, stale.owner):
                break  # claimed again
            await asyncio.sleep(0.02)
        await until(lambda: work.runs["org_a/0"] == 2)
        await until(stale_run.done, timeout_s=3)  # the next heartbeat finds its claim lost
        assert stale_run.cancelled() and len(intake.held) == 1
        assert await redis.exists(queue_keys.job(job_id))  # still there for the run that holds it now
        work.gate.set()
        await until(lambda: not intake.held)
        assert not await redis.exists(queue_keys.job(job_id)) and (await intake.queue.depth()).leased == 0
        work.gate.clear()
        work.runs.clear()
        await fill(redis, intake.queue, "org_a", 2)
        await until(lambda: len(intake.held) == 2, timeout_s=3)  # the org's room is whole again
    finally:
        work.gate.set()
        await intake.stop()


async def test_the_jobs_of_a_dead_replica_restart_within_a_lease(redis: Redis, queue_keys: QueueKeys) -> None:
    work = Work()
    queue = FairQueue(redis, queue_keys, lease_s=0.5, max_attempts=3)
    await fill(redis, queue, "org_a", 5)
    images = [image_of("org_a", i) for i in range(5)]
    await queue.claim(new_token(), 5, {}, 10)  # a replica claims them all, then is killed
    survivor = make(redis, queue_keys, work, lease_s=0.5)
    started = time.monotonic()
    survivor.start()
    try:
        await until(lambda: all(work.runs[i] == 1 for i in images) and not survivor.held)
        assert time.monotonic() - started < 0.5 + 0.1 + 2.0  # lease + reclaim interval + margin
        assert (await queue.depth()).leased == 0
    finally:
        await survivor.stop()


async def test_a_failing_job_is_logged_with_its_job_and_retried(
    redis: Redis, queue_keys: QueueKeys, caplog: pytest.LogCaptureFixture
) -> None:
    work = Work()
    work.fail = {"org_a/1"}
    intake = make(redis, queue_keys, work)
    await fill(redis, intake.queue, "org_a", 3)
    with caplog.at_level(logging.ERROR, logger="sightwire.engine.intake"):
        intake.start()
        try:
            await until(lambda: work.runs["org_a/1"] == 2 and not intake.held)
        finally:
            await intake.stop()
    assert work.runs == Counter({"org_a/0": 1, "org_a/1": 2, "org_a/2": 1})
    assert "ValueError: poison org_a/1" in caplog.text and "while working on job=job_" in caplog.text
    assert (await intake.queue.depth()).leased == 0


async def test_a_job_past_its_attempts_fails_through_the_callback_then_is_buried(
    redis: Redis, queue_keys: QueueKeys, caplog: pytest.LogCaptureFixture
) -> None:
    work = Work()
    work.exhausted_fails = 1  # the first try to fail the image itself fails: it is tried again
    queue = FairQueue(redis, queue_keys, lease_s=0.2, max_attempts=1)
    await fill(redis, queue, "org_a", 1)
    await queue.claim(new_token(), 1, {}, 10)  # its only attempt dies with its replica
    intake = make(redis, queue_keys, work, lease_s=0.2, max_attempts=1)
    dead = DeadLetters(redis, queue_keys)
    with caplog.at_level(logging.ERROR, logger="sightwire.supervise"):
        intake.start()
        try:
            await until(lambda: len(work.exhausted) == 1)
            deadline = time.monotonic() + 5
            while not await dead.count():
                assert time.monotonic() < deadline, "never buried"
                await asyncio.sleep(0.05)
        finally:
            await intake.stop()
    [letter] = await dead.list()
    assert letter.payload == {"image": "org_a/0"} and letter.reason == "attempts"
    assert work.runs == Counter()  # never run again
    assert "store write failed" in caplog.text and "while working on job=" in caplog.text


async def test_every_loop_survives_the_store_going_away(caplog: pytest.LogCaptureFixture) -> None:
    """Intake, heartbeat and reclaimer all fail while Redis is down, and all go on after."""
    private = RedisServer().start()
    client = Redis.from_url(private.url)  # no client-side retries: the loops see every failure
    queue_keys = QueueKeys(prefix=new_id("swr"), queue="online")
    work = Work()
    work.gate.clear()
    intake = make(client, queue_keys, work, lease_s=3.0)
    try:
        with caplog.at_level(logging.WARNING, logger="sightwire.supervise"):
            intake.start()
            await fill(client, intake.queue, "org_a", 2)
            await until(lambda: len(intake.held) == 2)  # held across the outage: the heartbeat has work
            private.stop()
            await asyncio.sleep(1.5)  # longer than every loop's period
            private.start()
            work.gate.set()
            await fill(client, intake.queue, "org_b", 4)
            await until(lambda: len(work.runs) == 6 and not intake.held, timeout_s=15)
            deadline = time.monotonic() + 15
            while (depth := await intake.queue.depth()).leased or depth.total:
                assert time.monotonic() < deadline, f"still {depth}"  # a job whose ack met a stale
                await asyncio.sleep(0.1)  # connection comes back and runs again: at least once
        assert not any(task.done() for task in intake._loops)
        for loop in ("intake", "heartbeat", "reclaimer"):
            assert f"test {loop}: ConnectionError" in caplog.text
    finally:
        await intake.stop()
        await client.aclose()
        private.cleanup()


async def test_stop_gives_running_jobs_back_at_once(redis: Redis, queue_keys: QueueKeys) -> None:
    work = Work()
    work.gate.clear()
    intake = make(redis, queue_keys, work, lease_s=30)
    await fill(redis, intake.queue, "org_a", 3)
    intake.start()
    await until(lambda: len(intake.held) == 3)
    await intake.stop()
    depth = await intake.queue.depth()
    assert depth.total == 3 and depth.leased == 0  # queued again, not waiting out a 30 s lease
    [job, *_] = await intake.queue.claim(new_token(), 3, {}, 10)
    assert job.attempts == 1  # giving back does not count as an attempt
