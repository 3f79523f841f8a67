"""The fair job queue on a real redis-server: round-robin claims, room, leases, reclaim, dead letters."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from redis.asyncio import Redis

from core.keys import QUEUE_SCRIPT_KEYS
from core.store.fair_queue import DeadLetters, FairQueue, Lease, QueuedJob, QueueKeys, new_token
from core.store.fair_queue.scripts import LOADER
from tests.support.queues import fill

BIG = 1_000


def queue(redis: Redis, queue_keys: QueueKeys, lease_s: float = 15.0, max_attempts: int = 3) -> FairQueue:
    return FairQueue(redis, queue_keys, lease_s=lease_s, max_attempts=max_attempts)


async def test_scripts_build_the_keys_queue_keys_names(redis: Redis, queue_keys: QueueKeys) -> None:
    """The shared loader fills ``K.org_queue``/``K.job`` in from ``QueueKeys``: Lua spells no key."""
    source = LOADER.compose("return {" + ", ".join(f"K.{name}(A.id)" for name in QUEUE_SCRIPT_KEYS) + "}")
    built = await redis.eval(source, 0, json.dumps({"base": queue_keys.base, "id": "x1"}))
    assert [b.decode() for b in built] == [getattr(queue_keys, name)("x1") for name in QUEUE_SCRIPT_KEYS]


async def test_a_job_commits_with_the_transaction_that_queues_it(redis: Redis, queue_keys: QueueKeys) -> None:
    jobs = queue(redis, queue_keys)
    token = new_token()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(f"{queue_keys.prefix}:img:1", "status", "queued")
        job_id = jobs.enqueue(pipe, "org_a", {"image": "img_1", "models": ["a", "b"]})
        assert await jobs.claim(token, 10, {}, BIG) == []  # nothing before EXEC
        await pipe.execute()
    [job] = await jobs.claim(token, 10, {}, BIG)
    assert (job.id, job.org, job.attempts) == (job_id, "org_a", 1)
    assert job.payload == {"image": "img_1", "models": ["a", "b"]}
    assert job.enqueued_ms <= time.time() * 1000 + 1000


async def test_one_orgs_backlog_does_not_delay_anothers_jobs(redis: Redis, queue_keys: QueueKeys) -> None:
    jobs = queue(redis, queue_keys)
    await fill(redis, jobs, "org_a", 100)
    await fill(redis, jobs, "org_b", 3)
    claimed = await jobs.claim(new_token(), 8, {}, BIG)
    assert [j.org for j in claimed] == ["org_a", "org_b"] * 3 + ["org_a", "org_a"]


async def test_the_round_is_shared_by_every_replica(redis: Redis, queue_keys: QueueKeys) -> None:
    """Two replicas claiming one job at a time still alternate the orgs: the round is global."""
    jobs = queue(redis, queue_keys)
    await fill(redis, jobs, "org_a", 10)
    await fill(redis, jobs, "org_b", 10)
    replicas = [new_token(), new_token()]
    orgs = [(await jobs.claim(replicas[i % 2], 1, {}, BIG))[0].org for i in range(8)]
    assert orgs == ["org_a", "org_b"] * 4


async def test_weights_scale_an_orgs_share(redis: Redis, queue_keys: QueueKeys) -> None:
    jobs = queue(redis, queue_keys)
    weights = {"org_a": 3.0, "org_c": 0.5}  # what a replica passes from its copy of the operator's
    for org in ("org_a", "org_b", "org_c"):
        await fill(redis, jobs, org, 60)
    token = new_token()
    orgs = [j.org for _ in range(9) for j in await jobs.claim(token, 5, {}, BIG, weights)]  # 45 jobs, small claims
    assert orgs.count("org_a") == pytest.approx(3 * orgs.count("org_b"), abs=3)
    assert orgs.count("org_b") == pytest.approx(2 * orgs.count("org_c"), abs=2)
    even = [j.org for j in await jobs.claim(token, 12, {}, BIG)]  # no weights passed: equal shares
    assert {org: even.count(org) for org in ("org_a", "org_b", "org_c")} == pytest.approx(
        {"org_a": 4, "org_b": 4, "org_c": 4}, abs=1)


async def test_room_bounds_what_one_org_gets_from_a_claim(redis: Redis, queue_keys: QueueKeys) -> None:
    jobs = queue(redis, queue_keys)
    await fill(redis, jobs, "org_a", 20)
    await fill(redis, jobs, "org_b", 20)
    token = new_token()
    first = await jobs.claim(token, 10, {"org_a": 0}, BIG)  # this replica holds all it may of org_a
    assert {j.org for j in first} == {"org_b"} and len(first) == 10
    second = await jobs.claim(token, 10, {"org_b": 0}, 2)  # org_a at most 2 now
    assert [j.org for j in second] == ["org_a", "org_a"]
    depth = await jobs.depth()
    assert depth.queued == {"org_a": 18, "org_b": 10} and depth.leased == 12 and depth.total == 28


async def test_ack_needs_the_lease_owner(redis: Redis, queue_keys: QueueKeys) -> None:
    jobs = queue(redis, queue_keys)
    [job_id] = await fill(redis, jobs, "org_a", 1)
    [claimed] = await jobs.claim(new_token(), 1, {}, BIG)
    assert await jobs.ack([Lease(job_id, new_token())]) == 0
    assert await jobs.ack([claimed.lease]) == 1
    assert not await redis.exists(queue_keys.job(job_id)) and await redis.zcard(queue_keys.leases) == 0
    assert await jobs.ack([claimed.lease]) == 0


async def test_an_expired_lease_goes_back_to_the_front_of_its_queue(redis: Redis, queue_keys: QueueKeys) -> None:
    jobs = queue(redis, queue_keys, lease_s=0.2)
    first, *_ = await fill(redis, jobs, "org_a", 3)
    dead_replica, survivor = new_token(), new_token()
    [claimed] = await jobs.claim(dead_replica, 1, {}, BIG)
    assert claimed.id == first
    assert (await jobs.reclaim(survivor)).requeued == 0  # not expired yet
    await asyncio.sleep(0.3)
    assert (await jobs.reclaim(survivor)).requeued == 1
    [again] = await jobs.claim(survivor, 1, {}, BIG)
    assert again.id == first and again.attempts == 2
    assert await jobs.renew([claimed.lease]) == [claimed.lease]  # the old owner learns it lost the job
    assert await jobs.ack([claimed.lease]) == 0


async def test_a_lease_is_one_claim_not_one_replica(redis: Redis, queue_keys: QueueKeys) -> None:
    """A replica that stalls past its lease and then claims the same job again holds two claims:
    the first is lost (its renew says so, its ack deletes nothing), the second runs the job."""
    jobs = queue(redis, queue_keys, lease_s=0.2)
    [job_id] = await fill(redis, jobs, "org_a", 1)
    replica = new_token()
    [stale] = await jobs.claim(replica, 1, {}, BIG)
    await asyncio.sleep(0.3)
    assert (await jobs.reclaim(replica)).requeued == 1  # its own reclaimer puts the job back
    [again] = await jobs.claim(replica, 1, {}, BIG)
    assert again.id == job_id and again.attempts == 2 and again.lease != stale.lease
    assert await jobs.renew([stale.lease, again.lease]) == [stale.lease]  # only the first claim is lost
    assert await jobs.ack([stale.lease]) == 0 and await redis.exists(queue_keys.job(job_id))
    assert await jobs.ack([again.lease]) == 1


async def test_the_reclaimer_taking_an_exhausted_job_fences_off_the_stale_run_of_its_own_replica(
    redis: Redis, queue_keys: QueueKeys
) -> None:
    """The job's last attempt stalls past its lease and the same replica's reclaimer takes it to
    fail and bury it: the attempt count does not move then, but the lease must, or the stale run
    would keep renewing and could ack the job before it is buried."""
    jobs = queue(redis, queue_keys, lease_s=0.1, max_attempts=1)
    dead = DeadLetters(redis, queue_keys)
    [job_id] = await fill(redis, jobs, "org_a", 1)
    replica = new_token()
    [stale] = await jobs.claim(replica, 1, {}, BIG)
    await asyncio.sleep(0.15)
    [exhausted] = (await jobs.reclaim(replica)).exhausted
    assert exhausted.id == job_id and exhausted.attempts == stale.attempts and exhausted.lease != stale.lease
    assert await jobs.renew([stale.lease, exhausted.lease]) == [stale.lease]
    assert await jobs.ack([stale.lease]) == 0
    assert await dead.bury(exhausted.lease, "attempts") and await dead.count() == 1


async def test_a_renewed_lease_is_never_taken_over(redis: Redis, queue_keys: QueueKeys) -> None:
    """A job slower than the lease, whose replica is alive, is not run twice."""
    jobs = queue(redis, queue_keys, lease_s=0.3)
    await fill(redis, jobs, "org_a", 1)
    other = new_token()
    [claimed] = await jobs.claim(new_token(), 1, {}, BIG)
    for _ in range(10):  # one second: three leases long
        await asyncio.sleep(0.1)
        assert await jobs.renew([claimed.lease]) == []
        assert (await jobs.reclaim(other)).requeued == 0
        assert await jobs.claim(other, 1, {}, BIG) == []
    assert await jobs.ack([claimed.lease]) == 1


async def test_retry_later_brings_a_failed_job_back_after_the_pause(redis: Redis, queue_keys: QueueKeys) -> None:
    jobs = queue(redis, queue_keys)
    [job_id] = await fill(redis, jobs, "org_a", 1)
    token = new_token()
    [claimed] = await jobs.claim(token, 1, {}, BIG)
    assert await jobs.retry_later(claimed.lease, 0.1)
    await asyncio.sleep(0.2)
    assert (await jobs.reclaim(token)).requeued == 1
    [again] = await jobs.claim(token, 1, {}, BIG)
    assert again.id == job_id and again.attempts == 2
    assert not await jobs.retry_later(claimed.lease, 0.1)  # the first claim's lease is gone


async def test_a_job_past_its_attempts_becomes_a_dead_letter_an_operator_can_requeue(
    redis: Redis, queue_keys: QueueKeys
) -> None:
    jobs = queue(redis, queue_keys, lease_s=0.1, max_attempts=2)
    dead = DeadLetters(redis, queue_keys)
    [job_id] = await fill(redis, jobs, "org_a", 1)
    reclaimer = new_token()
    for attempt in (1, 2):
        [job] = await jobs.claim(new_token(), 1, {}, BIG)  # each replica dies holding it
        assert job.attempts == attempt
        await asyncio.sleep(0.15)
        reclaimed = await jobs.reclaim(reclaimer)
    assert reclaimed.requeued == 0
    [exhausted] = reclaimed.exhausted
    assert (exhausted.id, exhausted.attempts, exhausted.payload["image"]) == (job_id, 2, "org_a/0")
    assert await jobs.claim(new_token(), 1, {}, BIG) == []  # leased to the reclaimer, not queued
    assert await dead.bury(job.lease, "attempts") is None  # only the current lease's holder buries
    entry = await dead.bury(exhausted.lease, "attempts")
    assert entry and await dead.count() == 1
    [letter] = await dead.list()
    assert (letter.entry, letter.job_id, letter.org, letter.attempts, letter.reason) == (
        entry, job_id, "org_a", 2, "attempts")
    assert not await redis.exists(queue_keys.job(job_id)) and await redis.zcard(queue_keys.leases) == 0
    assert await dead.requeue(entry) == job_id
    assert await dead.count() == 0 and await dead.requeue(entry) is None
    [back] = await jobs.claim(new_token(), 1, {}, BIG)
    assert back.id == job_id and back.attempts == 1 and back.payload == letter.payload


async def test_a_reclaimer_that_dies_before_burying_leaves_the_job_to_the_next(
    redis: Redis, queue_keys: QueueKeys
) -> None:
    jobs = queue(redis, queue_keys, lease_s=0.1, max_attempts=1)
    [job_id] = await fill(redis, jobs, "org_a", 1)
    await jobs.claim(new_token(), 1, {}, BIG)
    await asyncio.sleep(0.15)
    assert [j.id for j in (await jobs.reclaim(new_token())).exhausted] == [job_id]  # then it dies
    await asyncio.sleep(0.15)
    assert [j.id for j in (await jobs.reclaim(new_token())).exhausted] == [job_id]


async def test_released_jobs_go_back_unattempted_and_wake_a_replica(redis: Redis, queue_keys: QueueKeys) -> None:
    jobs = queue(redis, queue_keys)
    ids = await fill(redis, jobs, "org_a", 3)
    await redis.delete(queue_keys.wake)
    token = new_token()
    claimed = await jobs.claim(token, 2, {}, BIG)
    assert await jobs.release([j.lease for j in claimed]) == 2
    assert await jobs.wait(0.1)
    again = await jobs.claim(token, 3, {}, BIG)
    assert sorted(j.id for j in again) == sorted(ids) and {j.attempts for j in again} == {1}


async def test_an_enqueue_wakes_a_waiting_replica_and_a_claim_passes_the_token_on(
    redis: Redis, queue_keys: QueueKeys
) -> None:
    jobs = queue(redis, queue_keys)

    async def idle_replica() -> list[QueuedJob]:  # as the intake does: claim, wait for a token, claim
        token = new_token()
        assert not await jobs.claim(token, 1, {}, BIG)
        assert await jobs.wait(5)
        return await jobs.claim(token, 1, {}, BIG)

    waiter = asyncio.create_task(idle_replica())
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await fill(redis, jobs, "org_a", 3)
    [job] = await asyncio.wait_for(waiter, 2)
    assert job.org == "org_a" and time.monotonic() - started < 1
    assert await jobs.wait(0.1)  # work is left: the claim left a token for the next idle replica
    await jobs.claim(new_token(), 5, {}, BIG)
    assert not await jobs.wait(0.1)  # nothing left, no token


async def test_a_job_whose_record_was_deleted_is_dropped(redis: Redis, queue_keys: QueueKeys) -> None:
    jobs = queue(redis, queue_keys)
    gone, kept = await fill(redis, jobs, "org_a", 2)
    await redis.delete(queue_keys.job(gone))
    assert [j.id for j in await jobs.claim(new_token(), 5, {}, BIG)] == [kept]
    assert (await jobs.depth()).total == 0


async def test_a_large_group_is_queued_in_chunks_in_one_transaction(redis: Redis, queue_keys: QueueKeys) -> None:
    jobs = queue(redis, queue_keys)
    async with redis.pipeline(transaction=True) as pipe:
        ids = jobs.enqueue_many(pipe, "org_a", [{"image": f"img_{i}"} for i in range(2_500)])
        assert len(pipe.command_stack) == 3  # one script call per 1,000 jobs
        await pipe.execute()
    assert (await jobs.depth()).queued == {"org_a": 2_500}
    first = await jobs.claim(new_token(), 3, {}, BIG)
    assert [j.id for j in first] == ids[:3] and [j.payload["image"] for j in first] == ["img_0", "img_1", "img_2"]


async def test_an_org_alone_takes_a_whole_claim_and_shares_the_moment_another_comes(
    redis: Redis, queue_keys: QueueKeys
) -> None:
    """Alone in the round an org takes all the claim wants in one visit (no turn of the ring per
    job); once a second org queues, the next claim alternates as ever."""
    jobs = queue(redis, queue_keys)
    await fill(redis, jobs, "org_a", 20)
    assert [j.org for j in await jobs.claim(new_token(), 8, {}, BIG)] == ["org_a"] * 8
    await fill(redis, jobs, "org_b", 3)
    orgs = [j.org for j in await jobs.claim(new_token(), 6, {}, BIG)]
    assert orgs.count("org_b") == 3 and orgs[:2].count("org_b") == 1, orgs


async def test_a_claim_of_thousands_of_jobs_leases_every_one(redis: Redis, queue_keys: QueueKeys) -> None:
    """A claim's leases go to Redis in batches: one ZADD of them all would pass Lua's unpack limit
    (~8,000 values) past ~4,000 jobs, failing the script after it had popped them (lost)."""
    jobs = queue(redis, queue_keys)
    await fill(redis, jobs, "org_a", 4_500)
    claimed = await jobs.claim(new_token(), 4_500, {}, 10_000)
    assert len(claimed) == 4_500
    assert await redis.zcard(queue_keys.leases) == 4_500
