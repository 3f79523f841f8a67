"""What an image's submission, a job's claim and a webhook's steps cost Redis (issue 11): a
POST of an image is its key's lookup, its request charge and one script (the images charge,
the record, its job and deadline: refused, nothing is written); a claim leases its jobs with
one write each and one ZADD for all, an org alone in the round in one visit; queueing a
webhook, claiming it and recording its attempt each read the endpoint's record once, and
queueing one for a healthy endpoint places it in the ready index without reading the
endpoint's queue. Each step's command count is a budget: the figure it had before, less what
was cut, so a step that grows again fails here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from core.delivery import AttemptRecord, BreakerPolicy
from core.events import Events
from core.schemas import Attempt, Delivery, DeliveryStatus, EndpointState, EventType, ImageCreate, utcnow
from core.settings import Settings
from core.store import Store
from core.store.fair_queue import FairQueue, QueueKeys, new_token
from core.store.ratelimit import LimitKind
from core.tokens import new_id
from serve_app.local import RedisServer
from tests.support.asgi import local_api
from tests.support.commands import commands
from tests.support.queues import fill

URL = "http://127.0.0.1:9/hook"


@pytest.fixture(scope="module")
def settings(settings: Settings, quiet_redis: RedisServer) -> Settings:
    return settings.model_copy(update={"redis_url": quiet_redis.url})


@pytest.fixture
async def own(settings: Settings) -> AsyncIterator[Store]:
    """A store on a key prefix of its own: a claim sees only this test's deliveries."""
    store = Store.from_settings(settings.model_copy(update={"key_prefix": new_id("dc")}))
    yield store
    await store.close()


async def test_a_claim_leases_each_job_with_one_write_and_all_in_one_zadd(own: Store, org: str) -> None:
    jobs = FairQueue(own.redis, QueueKeys(prefix=own.keys.prefix, queue="online"), lease_s=15.0, max_attempts=3)
    await fill(own.redis, jobs, org, 1)
    await jobs.claim(new_token(), 8, {}, 100)  # Redis loads the script: not counted
    await fill(own.redis, jobs, org, 8)
    claimed: list[object] = []

    async def claim() -> None:
        claimed.extend(await jobs.claim(new_token(), 8, {}, 100))

    calls = await commands(own.redis, claim())
    assert len(claimed) == 8
    # before, 94 in all: a visit (and a turn of the ring) per job for an org alone in the round,
    # a fence HINCRBY and a ZADD per job, the ring's length read on every visit
    assert "hincrby" not in calls and "lmove" not in calls and calls["zadd"] == 1 and calls["llen"] <= 2, calls
    assert sum(calls.values()) <= 27, calls


async def test_posting_an_image_is_its_key_lookup_its_request_charge_and_one_script(
    settings: Settings, org: str
) -> None:
    """Before: the images charge in a script of its own, then a MULTI of the record's HSET, the
    listing's ZADD, the deadline's ZADD and the enqueue as EVAL with its source: 8 calls."""
    quiet = settings.model_copy(update={"key_prefix": new_id("dc"), "readiness_interval_s": 3600.0,
                                        "rate_limit_images_per_min": 600.0, "rate_limit_requests_per_s": 100.0})
    async with local_api(quiet) as api:
        key = await api.ctx.store.accounts.create_api_key(org)
        body = {"url": "http://127.0.0.1:9/a.png", "models": ["object_detection"], "deadline": 60}
        async with httpx.AsyncClient(base_url=api.url, headers={"Authorization": f"Bearer {key}"}) as client:
            async def post() -> None:
                answer = await client.post("/v1/images", json=body)
                assert answer.status_code == 202, answer.text
                assert answer.headers["ratelimit-policy"] == '"requests";q=100;w=1, "images";q=600;w=60'

            await post()  # Redis loads the scripts: not counted
            calls = await commands(api.ctx.store.redis, post())
    # the client's calls: GET (the key), EVALSHA (requests), EVALSHA (the image and its charge)
    assert not {"multi", "exec", "eval"} & set(calls), calls
    assert calls["evalsha"] == 2 and calls["get"] == 1, calls


async def test_a_refused_images_charge_writes_no_image(own: Store, org: str) -> None:
    await own.limits.configure(org, {LimitKind.IMAGES: 1})
    request = ImageCreate(url="http://127.0.0.1:9/a.png", models=["object_detection"], deadline=60)
    first, allowed = await own.images.create_charged(org, request, own.limits.bucket("key_a", org, LimitKind.IMAGES))
    second, refused = await own.images.create_charged(org, request, own.limits.bucket("key_a", org, LimitKind.IMAGES))
    assert first is not None and allowed.allowed and allowed.remaining == 0
    assert second is None and not refused.allowed and refused.retry_after_s > 59
    assert await own.redis.zrange(own.keys.org_images(org), 0, -1) == [first.id.encode()]
    assert [k async for k in own.redis.scan_iter(match=f"{own.keys.prefix}:*:img:*")] == [
        own.keys.image(first.id).encode()]  # no record of the refused one
    assert (await own.jobs.online.depth()).total == 1
    assert [m.decode() for m in await own.redis.zrange(own.keys.deadlines(0), 0, -1)] == [first.id]
    stored = await own.images.get(first.id, org)
    assert stored == first and stored.deadline is not None


async def queue(store: Store, org: str, resource: str, url: str = URL) -> Delivery:
    async with store.redis.pipeline(transaction=True) as pipe:
        delivery = store.outbox.add(pipe, Events().announcement(
            org, url, EventType.IMAGE_COMPLETED, resource, 1, {"id": resource}))
        await pipe.execute()
    return delivery


async def test_queueing_a_webhook_to_a_healthy_endpoint_reads_it_once_and_not_its_queue(
    own: Store, org: str
) -> None:
    await queue(own, org, "img_first")  # the endpoint exists, and a wake token waits
    calls = await commands(own.redis, queue(own, org, "img_second"))
    # before: HSETNX twice (state, host) and reindex's HMGET and ZRANGE of the queue: 16 in all
    assert "hsetnx" not in calls and "zrange" not in calls and calls["hmget"] == 1, calls
    assert sum(calls.values()) <= 13, calls  # MULTI, EVAL, EXEC and ten inside the script


async def test_a_webhook_queued_behind_a_leased_one_is_due_at_once(own: Store, org: str) -> None:
    """The index entry of a healthy endpoint only moves earlier when a delivery is queued: one
    leased delivery put the endpoint at its lease's end, the new one brings it back to now."""
    first = await queue(own, org, "img_a")
    now = utcnow()
    claim = await own.outbox.claim(now, 60.0, 10, 8, {})
    assert [d.id for d in claim.deliveries] == [first.id]
    eid = first.endpoint_id or ""
    assert await own.redis.zscore(own.keys.outbox(0), eid) == pytest.approx(now.timestamp() + 60.0)
    second = await queue(own, org, "img_b")
    assert await own.redis.zscore(own.keys.outbox(0), eid) == pytest.approx(second.created_at.timestamp())
    assert [d.id for d in (await own.outbox.claim(utcnow(), 60.0, 10, 8, {})).deliveries] == [second.id]


async def test_a_webhook_queued_for_an_open_endpoint_waits_for_its_cool_down(own: Store, org: str) -> None:
    """The other placement: an endpoint whose breaker is open is indexed at its cool-down's end."""
    first = await queue(own, org, "img_a")
    eid = first.endpoint_id or ""
    until = utcnow() + timedelta(seconds=30)
    await own.redis.hset(own.keys.endpoint(eid), mapping={"state": EndpointState.OPEN.value,
                                                          "open_until": until.timestamp()})
    await queue(own, org, "img_b")
    assert await own.redis.zscore(own.keys.outbox(0), eid) == pytest.approx(until.timestamp())
    assert (await own.outbox.claim(utcnow(), 60.0, 10, 8, {})).deliveries == []


async def test_claiming_a_delivery_reads_its_endpoint_once_in_one_pass(own: Store, org: str) -> None:
    queued = await queue(own, org, "img_c")
    calls = await commands(own.redis, own.outbox.claim(utcnow(), 60.0, 10, 8, {}))
    # before: the endpoint read three times (owner, breaker, reindex) and a second pass: 14 in all
    assert calls["hmget"] == 1 and calls["zrangebyscore"] == 2, calls
    assert sum(calls.values()) <= 10, calls
    leased = await own.outbox.get(queued.id)
    assert leased is not None and leased.status is DeliveryStatus.PENDING


async def test_a_claim_reads_past_superseded_deliveries_in_another_pass(own: Store, org: str) -> None:
    """A pass reads at most ``take + 16`` ids of an endpoint; when those were all finished ones,
    the claim passes again instead of leaving the due delivery behind them."""
    stale = [await queue(own, org, f"img_s{i}") for i in range(20)]
    for delivery in stale:  # finished outside the scripts: the queue still lists them
        await own.redis.hset(own.keys.delivery(delivery.id), "status", DeliveryStatus.DELIVERED.value)
    wanted = await queue(own, org, "img_live")
    claim = await own.outbox.claim(utcnow(), 60.0, 1, 8, {})
    assert [d.id for d in claim.deliveries] == [wanted.id]


async def test_recording_a_delivered_attempt_reads_the_endpoint_once(own: Store, org: str) -> None:
    await queue(own, org, "img_d")
    await queue(own, org, "img_e")
    warm, claimed = (await own.outbox.claim(utcnow(), 60.0, 10, 8, {})).deliveries

    def done(delivery: Delivery) -> AttemptRecord:
        return AttemptRecord(delivery, Attempt(at=utcnow(), status_code=200, latency_ms=1.0, succeeded=True), None)

    await own.outbox.record([done(warm)], BreakerPolicy())  # Redis loads the script: not counted
    calls = await commands(own.redis, own.outbox.record([done(claimed)], BreakerPolicy()))
    assert calls["hmget"] == 2, calls  # the delivery and the endpoint; before, reindex read it again
    assert sum(calls.values()) <= 14, calls
    delivered = await own.outbox.get(claimed.id)
    assert delivered is not None and delivered.status is DeliveryStatus.DELIVERED
    assert await own.redis.zscore(own.keys.outbox(0), claimed.endpoint_id or "") is None  # nothing left
