"""The Redis store: atomic create, derived status, idempotent finalize, at-least-once jobs."""

from __future__ import annotations

import asyncio
import json

from core.schemas import (
    ErrorCode,
    ErrorInfo,
    EventType,
    ImageCreate,
    ImageStatus,
    ModelResult,
    ModelStatus,
)
from core.settings import Settings
from core.store import Store
from core.store.fair_queue import new_token
from core.store.jobs import QueueName
from core.tokens import hash_api_key, new_id

DONE = ModelResult(status=ModelStatus.COMPLETE, version="m@1", result={"ok": True})
FAILED = ModelResult(status=ModelStatus.FAILED, error=ErrorInfo(code=ErrorCode.MODEL_FAILED, message="boom"))


def request(**extra: object) -> ImageCreate:
    return ImageCreate(url="http://example.com/a.png", models=["a", "b"],
                       webhook_url="http://example.com/hook", **extra)


async def test_create_writes_record_and_job_together(store: Store, org: str) -> None:
    record = await store.images.create(org, request(metadata={"k": 1}, external_id="ext-1"))
    assert record.status is ImageStatus.QUEUED
    assert record.sequence == 1
    stored = await store.images.get(record.id, org)
    assert stored is not None and stored.metadata == {"k": 1} and stored.external_id == "ext-1"
    keys = store.keys.job_queue(QueueName.ONLINE)
    [job_id] = await store.redis.lrange(keys.org_queue(org), 0, -1)
    payload = json.loads(await store.redis.hget(keys.job(job_id.decode()), "payload"))
    assert payload == {"image": record.id, "models": ["a", "b"]}


async def test_other_org_cannot_read(store: Store, org: str) -> None:
    record = await store.images.create(org, request())
    assert await store.images.get(record.id, "org_other") is None
    assert await store.images.get("img_missing", org) is None


async def test_status_follows_model_results(store: Store, org: str) -> None:
    record = await store.images.create(org, request())
    await store.images.mark_started(record.id, 10, 20)
    assert (await store.images.get(record.id)).status is ImageStatus.PROCESSING
    await store.images.write_model_result(record.id, "a", DONE)
    assert (await store.images.get(record.id)).status is ImageStatus.PROCESSING
    await store.images.write_model_result(record.id, "b", FAILED)
    final = await store.images.get(record.id)
    assert final.status is ImageStatus.PARTIAL
    assert final.sequence == 4
    assert (final.width, final.height) == (10, 20)


async def test_image_error_fails_the_image(store: Store, org: str) -> None:
    record = await store.images.create(org, request())
    await store.images.write_image_error(record.id, ErrorInfo(code=ErrorCode.NOT_AN_IMAGE, message="x"))
    assert (await store.images.get(record.id)).status is ImageStatus.FAILED
    _, [delivery] = await store.images.finalize(record.id)
    assert delivery.event_type is EventType.IMAGE_FAILED


async def test_finalize_announces_each_state_once(store: Store, org: str) -> None:
    record = await store.images.create(org, request())
    assert (await store.images.finalize(record.id))[1] == []  # not finished: nothing to announce
    for name in ("a", "b"):
        await store.images.write_model_result(record.id, name, DONE)
    final, [delivery] = await store.images.finalize(record.id)
    assert final.status is ImageStatus.COMPLETE
    assert delivery.event_type is EventType.IMAGE_COMPLETED
    assert delivery.sequence == final.sequence
    assert (await store.images.finalize(record.id))[1] == []  # a re-run announces nothing new
    assert [d.id for d in await store.outbox.for_resource(record.id)] == [delivery.id]


async def test_concurrent_finalize_announces_once(store: Store, org: str) -> None:
    record = await store.images.create(org, request())
    for name in ("a", "b"):
        await store.images.write_model_result(record.id, name, DONE)
    results = await asyncio.gather(*(store.images.finalize(record.id) for _ in range(5)))
    assert sum(len(deliveries) for _, deliveries in results) == 1


async def test_webhook_events_filter(store: Store, org: str) -> None:
    record = await store.images.create(org, request(webhook_events=[EventType.IMAGE_FAILED]))
    for name in ("a", "b"):
        await store.images.write_model_result(record.id, name, DONE)
    assert (await store.images.finalize(record.id))[1] == []


async def test_more_commands_at_once_than_pooled_connections_wait_for_one_instead_of_failing(
    settings: Settings,
) -> None:
    """A replica holds 256 jobs, each with a Redis command in flight at times: past the pool's size
    a command must wait for a connection. redis-py's default pool raised ``MaxConnectionsError``
    at its 101st connection, the job failed, its retry could not be written either, and its
    image waited out the lease (the ~16 s steps of bench_fairness's tail)."""
    store = Store.from_settings(settings.model_copy(update={"redis_max_connections": 20}))
    try:
        key = new_id("swpool")
        replies = await asyncio.gather(*(store.redis.blpop([key], timeout=0.1) for _ in range(300)))
        assert replies == [None] * 300
        pool = store.redis.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 20  # never more than that
    finally:
        await store.close()


async def test_unacked_job_is_reclaimed_after_its_lease(settings: Settings, org: str) -> None:
    """A claim is a lease: a worker that dies without acking loses the job once the lease ends,
    and a reclaim puts it back in the org's queue for the next claim."""
    store = Store.from_settings(settings.model_copy(update={"key_prefix": new_id("swlease"), "job_lease_s": 0.3}))
    try:
        record = await store.images.create(org, request())
        queue = store.jobs.online
        [taken] = await queue.claim(new_token(), 10, {}, 10)
        assert taken.payload["image"] == record.id and taken.attempts == 1
        rescuer = new_token()
        assert (await queue.reclaim(rescuer)).requeued == 0  # the lease still runs
        await asyncio.sleep(0.4)
        assert (await queue.reclaim(rescuer)).requeued == 1
        [again] = await queue.claim(rescuer, 10, {}, 10)
        assert again.id == taken.id and again.attempts == 2
        assert await queue.ack([again.lease]) == 1
        assert (await queue.depth()).total == 0 and (await queue.depth()).leased == 0
    finally:
        await store.close()


async def test_api_keys_are_stored_hashed(store: Store, org: str) -> None:
    key = await store.accounts.create_api_key(org)
    assert await store.accounts.org_for_key(key) == org
    assert await store.redis.get(store.keys.api_key(key)) is None
    assert await store.redis.get(store.keys.api_key(hash_api_key(key))) == org.encode()
    assert await store.accounts.org_for_key(key + "x") is None
    secrets = await store.accounts.webhook_secrets(org)
    assert secrets[0].startswith("whsec_") and secrets == await store.accounts.webhook_secrets(org)
