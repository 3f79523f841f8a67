"""The store spread over several shards (hash tags) on one real redis-server: every org's keys
in its own shard, and every consumer (job claims, leases, dead letters, deadlines, the outbox,
idle waits) serving all the shards."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from core.delivery import SharedRoom
from core.schemas import ImageCreate, ModelResult, ModelStatus, utcnow
from core.settings import Settings
from core.shards import ShardRotation
from core.store import Store
from core.store.fair_queue import FairQueue, new_token
from core.store.jobs import QueueName
from core.tokens import new_id
from serve_app.local import free_port
from tests.support.shards import org_in_shard

SHARDS = 4
DONE = ModelResult(status=ModelStatus.COMPLETE, version="m@1", result={"ok": True})


@pytest.fixture
async def sharded(settings: Settings) -> AsyncIterator[Store]:
    store = Store.from_settings(settings.model_copy(update={"key_prefix": new_id("swshard"), "store_shards": SHARDS}))
    yield store
    await store.close()


def image(url: str = "http://example.com/a.png", **extra: object) -> ImageCreate:
    return ImageCreate(url=url, models=["a"], **extra)


async def test_an_orgs_records_and_jobs_live_under_its_shards_hash_tag(sharded: Store) -> None:
    keys = sharded.keys
    orgs = [org_in_shard(keys, shard) for shard in range(SHARDS)]
    ids = [(await sharded.images.create(org, image())).id for org in orgs]
    for shard, (org, image_id) in enumerate(zip(orgs, ids, strict=True)):
        assert keys.shard_of_id(image_id) == shard
        assert await sharded.redis.exists(f"{keys.prefix}:{{s{shard}}}:img:{image_id}")
        assert await sharded.redis.zscore(keys.org_images(org), image_id) is not None
        assert keys.org_images(org).startswith(keys.base(shard))
        assert await sharded.images.get(image_id, org) is not None
        assert await sharded.images.get(image_id, orgs[(shard + 1) % SHARDS]) is None
    depth = await sharded.jobs.online.depth()
    assert depth.queued == dict.fromkeys(orgs, 1)


async def test_a_claim_serves_every_shard_and_each_lease_step_finds_its_shard(sharded: Store) -> None:
    keys = sharded.keys
    orgs = [org_in_shard(keys, shard) for shard in range(SHARDS)]
    for org in orgs:
        for _ in range(3):
            await sharded.images.create(org, image())
    queue, token = sharded.jobs.online, new_token()
    first = await queue.claim(token, SHARDS, {}, 10)
    assert sorted(job.org for job in first) == sorted(orgs)  # one of each shard, not three of one
    rest = await queue.claim(token, 100, {}, 10)
    assert len(rest) == 2 * SHARDS
    jobs = first + rest
    assert await queue.renew([job.lease for job in jobs]) == []
    assert await queue.ack([job.lease for job in jobs]) == len(jobs)
    assert (await queue.depth()).leased == 0 and (await queue.depth()).total == 0


async def test_a_shard_whose_master_is_away_does_not_stop_the_others_lease_steps(sharded: Store) -> None:
    """Before, renew, ack, release and reclaim went shard by shard and stopped at the first that
    failed: the later shards' leases went unrenewed (and were taken over) while one master was away."""
    keys, queue = sharded.keys, sharded.jobs.online
    for shard in (0, 1):
        await sharded.images.create(org_in_shard(keys, shard), image())
    jobs = await queue.claim(new_token(), 10, {}, 10)
    assert sorted(keys.shard_of_id(job.lease.job_id) for job in jobs) == [0, 1]
    live = next(job for job in jobs if keys.shard_of_id(job.lease.job_id) == 1)
    # nothing listens there: every command is refused at once (no retries: a lease is 3 s here)
    away = Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    healthy = queue.shards[0]
    queue.shards[0] = FairQueue(away, healthy.keys, lease_s=healthy.lease_ms / 1000, max_attempts=3)
    try:
        leases = [job.lease for job in jobs]
        expiry = await sharded.redis.zscore(queue.shards[1].keys.leases, live.lease.job_id)
        await asyncio.sleep(0.05)
        with pytest.raises(RedisConnectionError):  # the caller hears of it, once the others are done
            await queue.renew(leases)
        assert await sharded.redis.zscore(queue.shards[1].keys.leases, live.lease.job_id) > expiry
        assert (await queue.reclaim(new_token())).requeued == 0  # a sweep: shard 1 swept, shard 0 logged
        with pytest.raises(RedisConnectionError):
            await queue.ack(leases)
        assert await sharded.redis.zscore(queue.shards[1].keys.leases, live.lease.job_id) is None  # acked
    finally:
        queue.shards[0] = healthy
        await away.aclose()


async def test_a_master_that_hangs_does_not_hold_up_the_other_shards_renewals(sharded: Store) -> None:
    """Shard 0's master accepts and never answers; shard 1's lease is renewed meanwhile."""
    keys, queue = sharded.keys, sharded.jobs.online
    for shard in (0, 1):
        await sharded.images.create(org_in_shard(keys, shard), image())
    jobs = await queue.claim(new_token(), 10, {}, 10)
    live = next(job for job in jobs if keys.shard_of_id(job.lease.job_id) == 1)

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client goes

    silent = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    hanging = Redis(port=silent.sockets[0].getsockname()[1], retry=Retry(NoBackoff(), 0))
    healthy = queue.shards[0]
    queue.shards[0] = FairQueue(hanging, healthy.keys, lease_s=healthy.lease_ms / 1000, max_attempts=3)
    renewal = None
    try:
        expiry = await sharded.redis.zscore(queue.shards[1].keys.leases, live.lease.job_id)
        await asyncio.sleep(0.05)
        renewal = asyncio.ensure_future(queue.renew([job.lease for job in jobs]))
        for _ in range(100):
            if await sharded.redis.zscore(queue.shards[1].keys.leases, live.lease.job_id) > expiry:
                break
            await asyncio.sleep(0.02)
        assert await sharded.redis.zscore(queue.shards[1].keys.leases, live.lease.job_id) > expiry
        assert not renewal.done()  # shard 0's answer never comes
    finally:
        if renewal is not None:
            renewal.cancel()
        queue.shards[0] = healthy
        await hanging.aclose()
        silent.close()


async def test_an_orgs_room_holds_across_the_claims_second_pass(sharded: Store) -> None:
    """Shard 0's org fills its share, so the claim asks that shard again for what the empty shards
    left: the org's room must count what the first pass already took."""
    org = org_in_shard(sharded.keys, 0)
    for _ in range(10):
        await sharded.images.create(org, image())
    jobs = await sharded.jobs.online.claim(new_token(), 8, {org: 3}, 10)
    assert len(jobs) == 3


async def test_dead_letters_name_their_shard_and_requeue_there(sharded: Store) -> None:
    keys = sharded.keys
    orgs = [org_in_shard(keys, 1), org_in_shard(keys, 3)]
    for org in orgs:
        await sharded.images.create(org, image())
    queue, dead = sharded.jobs.online, sharded.jobs.dead[QueueName.ONLINE]
    jobs = await queue.claim(new_token(), 10, {}, 10)
    entries = [await dead.bury(job.lease, "attempts") for job in jobs]
    assert sorted(e.split("/")[0] for e in entries) == ["1", "3"]
    assert await dead.count() == 2
    listed = await dead.list()
    assert sorted(letter.entry for letter in listed) == sorted(entries)
    assert [letter.entry for letter in await dead.list(1, before=listed[0].entry)] == [listed[1].entry]
    assert (await dead.get(entries[0])).org == jobs[0].org
    assert await sharded.jobs.requeue_dead(QueueName.ONLINE, entries[1]) is not None
    assert await dead.count() == 1
    assert [job.org for job in await queue.claim(new_token(), 10, {}, 10)] == [jobs[1].org]
    assert await dead.requeue("1700000000000-0") is None  # no shard named: no such entry
    assert await dead.get("9/1700000000000-0") is None  # no such shard


async def test_the_deadline_sweep_covers_every_shard(sharded: Store) -> None:
    orgs = [org_in_shard(sharded.keys, shard) for shard in (0, 2)]
    past = utcnow() + timedelta(seconds=1)
    ids = [(await sharded.images.create(org, image(deadline=past))).id for org in orgs]
    assert sorted(await sharded.deadlines.due(past.timestamp() + 1)) == sorted(ids)
    assert await sharded.deadlines.sweep(past.timestamp() + 1) == 2
    assert await sharded.deadlines.due(past.timestamp() + 1) == []


async def test_the_outbox_claims_every_shard_and_a_host_cap_spans_them(sharded: Store) -> None:
    """Two orgs in two shards post to one host: each shard's deliveries are claimed, and a
    host cap of 1 lets only one of them go at once, whichever shard it is in."""
    orgs = [org_in_shard(sharded.keys, 0), org_in_shard(sharded.keys, 2)]
    for org in orgs:
        record = await sharded.images.create(org, image(webhook_url=f"http://hooks.example/{org}"))
        await sharded.images.write_results(record.id, {"a": DONE}, (4, 4))
        await sharded.images.finalize(record.id)
    now = utcnow()
    capped = await sharded.outbox.claim(now, 5.0, 10, 8, {}, SharedRoom(org_cap=10, host_cap=1))
    assert len(capped.deliveries) == 1
    rest = await sharded.outbox.claim(now, 5.0, 10, 8, {}, SharedRoom(org_cap=10, host_cap=10))
    assert sorted(d.org_id for d in capped.deliveries + rest.deliveries) == sorted(orgs)
    for d in capped.deliveries + rest.deliveries:
        assert sharded.keys.shard_of_id(d.id) == sharded.keys.shard_of_org(d.org_id)


async def test_an_idle_wait_wakes_on_any_shards_enqueue(sharded: Store) -> None:
    queue = sharded.jobs.online
    while await queue.wait(0.01):  # drop the tokens earlier enqueues left
        pass
    waiting = asyncio.ensure_future(queue.wait(5.0))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await sharded.images.create(org_in_shard(sharded.keys, 3), image())
    assert await asyncio.wait_for(waiting, 2.0) is True


async def test_busy_shards_take_turns_however_many_empty_ones_lie_between() -> None:
    """Shards 0 and 3 have work, 1 and 2 none; claims of one item alternate between 0 and 3
    (a rotation that only stepped one on each time gave shard 3 three turns in four)."""
    rotation, served = ShardRotation(4), Counter()

    async def take(shard: int, n: int) -> int:
        if shard in (0, 3):
            served[shard] += 1
            return 1
        return 0

    for _ in range(100):
        assert await rotation.take(1, take) == 1
    assert served == {0: 50, 3: 50}


async def test_a_failing_shard_keeps_what_the_others_gave_and_fails_only_alone() -> None:
    rotation = ShardRotation(3)

    async def take(shard: int, n: int) -> int:
        if shard == 1:
            raise ConnectionError("master away")
        return n

    assert await rotation.take(6, take) == 6  # shards 0 and 2 fill in

    async def away(shard: int, n: int) -> int:
        raise ConnectionError("all away")

    with pytest.raises(ConnectionError, match="all away"):
        await rotation.take(6, away)


async def test_the_outbox_keeps_an_endpoints_room_across_a_claims_second_pass(sharded: Store) -> None:
    """One endpoint of shard 0 has 6 deliveries due, the other shards none: the claim asks shard 0
    again for what they left, and the endpoint's room of 4 must count what the first pass took."""
    org = org_in_shard(sharded.keys, 0)
    for i in range(6):
        record = await sharded.images.create(org, image(url=f"http://example.com/{i}.png",
                                                        webhook_url="http://hooks.example/one"))
        await sharded.images.write_results(record.id, {"a": DONE}, (4, 4))
        await sharded.images.finalize(record.id)
    claim = await sharded.outbox.claim(utcnow(), 5.0, 8, 4, {}, SharedRoom(org_cap=10, host_cap=10))
    assert len(claim.deliveries) == 4


async def test_dead_letter_pages_keep_entries_with_equal_stream_ids_in_other_shards(
    sharded: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Separate streams mint equal ids (same millisecond): a page ending on one shard's entry
    must not skip another shard's entry of the same id."""
    dead = sharded.jobs.dead[QueueName.ONLINE]
    for shard in range(SHARDS):
        await sharded.redis.xadd(dead.shards[shard].keys.dead, {"job": f"job-{shard}", "org": "o", "payload": "{}",
                                                                "attempts": 3, "reason": "attempts"}, id="1000-1")
    seen = []
    page = await dead.list(1)
    while page:
        seen += [letter.entry for letter in page]
        page = await dead.list(1, before=page[-1].entry)
    assert seen == [f"{shard}/1000-1" for shard in reversed(range(SHARDS))]
