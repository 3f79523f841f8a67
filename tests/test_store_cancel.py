"""Cancel, deadlines and retry in the store: atomic with the announcement, results kept, once."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta

import pytest

from core.schemas import (
    ErrorCode,
    ErrorInfo,
    EventType,
    GroupCreate,
    GroupImage,
    ImageCreate,
    ImageStatus,
    ModelResult,
    ModelStatus,
    utcnow,
)
from core.settings import Settings
from core.store import Store
from core.store.groups import RetryRefused
from core.store.jobs import QueueName

DONE = ModelResult(status=ModelStatus.COMPLETE, version="m@1", result={"ok": True})
FAILED = ModelResult(status=ModelStatus.FAILED, error=ErrorInfo(code=ErrorCode.MODEL_FAILED, message="boom"))
HOOK = "http://example.com/hook"


def image(**extra: object) -> ImageCreate:
    return ImageCreate(url="http://example.com/a.png", models=["a", "b"], webhook_url=HOOK, **extra)


def group(n: int, **extra: object) -> GroupCreate:
    return GroupCreate(images=[GroupImage(url=f"http://example.com/{i}.png") for i in range(n)],
                       models=["a", "b"], webhook_url=HOOK, **extra)


async def events(store: Store, resource_id: str) -> list[tuple[EventType, str]]:
    """The webhooks queued for a resource but progress: (event, the status its payload carries)."""
    return [(d.event_type, json.loads(d.body)["data"]["status"]) for d in await store.outbox.for_resource(resource_id)
            if d.event_type is not EventType.GROUP_PROGRESS]


async def test_cancel_keeps_results_and_drops_later_writes(store: Store, org: str) -> None:
    record = await store.images.create(org, image())
    await store.images.mark_started(record.id, 10, 20)
    await store.images.write_model_result(record.id, "a", DONE)
    canceled = await store.images.cancel(record.id, org)
    assert canceled is not None and canceled.status is ImageStatus.CANCELED and canceled.error is None
    # "b" was still running: its result arrives after the cancel and is dropped, unannounced.
    await store.images.write_model_result(record.id, "b", DONE)
    await store.images.finalize(record.id)
    stored = await store.images.get(record.id, org)
    assert stored.models["a"] == DONE and stored.models["b"].status is ModelStatus.QUEUED
    assert stored.status is ImageStatus.CANCELED and stored.sequence == canceled.sequence
    assert await events(store, record.id) == [(EventType.IMAGE_COMPLETED, "canceled")]


async def test_cancel_twice_or_finished_is_a_no_op(store: Store, org: str) -> None:
    record = await store.images.create(org, image())
    first = await store.images.cancel(record.id, org)
    again = await store.images.cancel(record.id, org)
    assert again == first
    finished = await store.images.create(org, image())
    for name in ("a", "b"):
        await store.images.write_model_result(finished.id, name, DONE)
    done, _ = await store.images.finalize(finished.id)
    assert await store.images.cancel(finished.id, org) == done
    assert await events(store, finished.id) == [(EventType.IMAGE_COMPLETED, "complete")]
    assert await store.images.cancel(record.id, "org_other") is None


async def test_cancel_racing_finalize_announces_one_state(store: Store, org: str) -> None:
    """Whichever commits first wins; the other adds nothing: one webhook, no result lost."""
    outcomes = set()
    for _ in range(40):
        record = await store.images.create(org, image())
        await store.images.write_model_result(record.id, "a", DONE)

        async def finish(image_id: str = record.id) -> None:
            await store.images.write_model_result(image_id, "b", DONE)
            await store.images.finalize(image_id)

        await asyncio.gather(finish(), store.images.cancel(record.id, org))
        final = await store.images.get(record.id)
        queued = await events(store, record.id)
        assert len(queued) == 1 and queued[0][1] == final.status.value
        assert final.models["a"] == DONE
        assert final.status is ImageStatus.CANCELED or final.models["b"] == DONE
        outcomes.add(final.status)
    assert outcomes <= {ImageStatus.CANCELED, ImageStatus.COMPLETE}


async def test_group_cancel_counts_partial_and_announces_once(store: Store, org: str) -> None:
    created = await store.groups.create(org, group(4))
    ids = await store.groups.image_ids(created.id)
    for name in ("a", "b"):
        await store.images.write_model_result(ids[0], name, DONE)
    await store.images.finalize(ids[0])
    canceled = await store.groups.cancel(created.id, org)
    assert canceled.status is ImageStatus.PARTIAL
    assert (canceled.counts.complete, canceled.counts.canceled, canceled.counts.pending) == (1, 3, 0)
    assert await store.groups.canceled(created.id)
    again = await store.groups.cancel(created.id, org)
    assert again.sequence == canceled.sequence
    assert await events(store, created.id) == [(EventType.GROUP_COMPLETED, "partial")]

    untouched = await store.groups.create(org, group(2))
    assert (await store.groups.cancel(untouched.id, org)).status is ImageStatus.CANCELED


async def test_deadline_sweep_cancels_a_queued_image(store: Store, org: str) -> None:
    """Nothing processes this store's queue: only the sweep can cancel the image on time."""
    record = await store.images.create(org, image(deadline=0.2))
    assert record.deadline is not None
    assert record.id not in await store.deadlines.due(time.time())
    await asyncio.sleep(0.3)
    assert record.id in await store.deadlines.due(time.time())
    await store.deadlines.sweep(time.time())
    stored = await store.images.get(record.id, org)
    assert stored.status is ImageStatus.CANCELED and stored.error.code is ErrorCode.DEADLINE
    assert all(m.status is ModelStatus.QUEUED for m in stored.models.values()) and stored.width is None
    assert await events(store, record.id) == [(EventType.IMAGE_COMPLETED, "canceled")]
    assert record.id not in await store.deadlines.due(time.time())


async def test_deadline_of_a_group_cancels_its_images(store: Store, org: str) -> None:
    created = await store.groups.create(org, group(3, deadline=0.1))
    await asyncio.sleep(0.2)
    assert created.id in await store.deadlines.due(time.time())
    await store.deadlines.sweep(time.time())
    after = await store.groups.get(created.id, org)
    assert after.status is ImageStatus.CANCELED and after.counts.canceled == 3
    codes = {r.error.code for r in await store.images.get_many(await store.groups.image_ids(created.id))}
    assert codes == {ErrorCode.DEADLINE}


async def test_retry_reruns_only_failures(store: Store, org: str) -> None:
    created = await store.groups.create(org, group(4))
    ok, partial, failed, broken = ids = await store.groups.image_ids(created.id)
    outcomes = {ok: (DONE, DONE), partial: (DONE, FAILED), failed: (FAILED, FAILED)}
    for image_id, (a, b) in outcomes.items():
        await store.images.write_model_result(image_id, "a", a)
        await store.images.write_model_result(image_id, "b", b)
        await store.images.finalize(image_id)
    with pytest.raises(RetryRefused):  # ``broken`` still pending: the group runs
        await store.groups.retry(created.id, org)
    await store.images.write_image_error(broken, ErrorInfo(code=ErrorCode.FETCH_FAILED, message="x"))
    await store.images.finalize(broken)
    assert (await store.groups.get(created.id, org)).status is ImageStatus.PARTIAL
    jobs = store.keys.job_queue(QueueName.ONLINE)
    before = await store.redis.llen(jobs.org_queue(org))

    reopened = await store.groups.retry(created.id, org)
    assert reopened.status is ImageStatus.PROCESSING and reopened.counts.pending == 3
    queued = [json.loads(await store.redis.hget(jobs.job(j.decode()), "payload"))
              for j in (await store.redis.lrange(jobs.org_queue(org), before, -1))]
    assert sorted((p["image"], tuple(p["models"])) for p in queued) == sorted(
        [(partial, ("b",)), (failed, ("a", "b")), (broken, ("a", "b"))])
    records = {r.id: r for r in await store.images.get_many(ids)}
    assert records[ok].models == {"a": DONE, "b": DONE} and records[partial].models["a"] == DONE
    assert records[broken].error is None and records[partial].models["b"].status is ModelStatus.QUEUED
    with pytest.raises(RetryRefused):  # re-opened: running again
        await store.groups.retry(created.id, org)

    for image_id in (partial, failed, broken):
        for name in ("a", "b"):
            if records[image_id].models[name].status is ModelStatus.QUEUED:
                await store.images.write_model_result(image_id, name, DONE)
        await store.images.finalize(image_id)
    assert await events(store, created.id) == [
        (EventType.GROUP_COMPLETED, "partial"), (EventType.GROUP_UPDATED, "complete")]
    with pytest.raises(RetryRefused):  # nothing failed any more
        await store.groups.retry(created.id, org)


async def test_models_added_to_a_canceled_group_skip_its_canceled_images(store: Store, org: str) -> None:
    created = await store.groups.create(org, group(2))
    canceled = await store.groups.cancel(created.id, org)
    grown, _ = await store.groups.add_models(created.id, org, ["c"])
    assert grown.counts == canceled.counts and grown.status is ImageStatus.CANCELED
    records = await store.images.get_many(await store.groups.image_ids(created.id))
    assert all("c" not in r.models for r in records)


async def test_deadlines_of_growth_and_models_requests(store: Store, org: str) -> None:
    created = await store.groups.create(org, group(1))
    grown = await store.groups.add_images(created.id, org, [GroupImage(url="http://example.com/new.png")],
                                          deadline=_soon())
    added = grown.image_ids[-1]
    assert (await store.images.get(added)).deadline is not None
    assert (await store.images.get(grown.image_ids[0])).deadline is None  # growth's deadline is the new images'
    single = await store.images.create(org, image())
    record, _ = await store.images.add_models(single.id, org, ["c"], deadline=_soon())
    assert record.deadline is not None
    await store.groups.add_models(created.id, org, ["c"], deadline=_soon())
    assert (await store.groups.get(created.id, org)).deadline is not None
    await asyncio.sleep(0.2)
    due = set(await store.deadlines.due(time.time()))
    assert {added, single.id, created.id} <= due


async def test_a_deadline_covers_only_the_work_of_its_request(store: Store, org: str) -> None:
    """Models added later without a deadline have none: the first request's deadline, passed by
    then, must not cancel them the moment they start, nor sweep them."""
    single = await store.images.create(org, image(deadline=_soon()))
    await store.images.write_results(single.id, {"a": DONE, "b": DONE})
    await store.images.finalize(single.id)
    await asyncio.sleep(0.2)  # its deadline has passed, with the image finished
    record, added = await store.images.add_models(single.id, org, ["c"])
    assert added == ["c"] and record.deadline is None
    assert single.id not in await store.deadlines.due(time.time())

    created = await store.groups.create(org, group(1))
    [member] = await store.groups.image_ids(created.id)
    await store.images.add_models(member, org, ["c"], deadline=_soon())  # a group image's own deadline
    await asyncio.sleep(0.2)
    assert member in await store.deadlines.due(time.time())
    await store.deadlines.sweep(time.time())
    assert (await store.images.get(member)).status is ImageStatus.CANCELED


async def test_a_group_done_in_time_leaves_the_deadline_sweep(store: Store, org: str) -> None:
    """Its deadline would otherwise cancel images added later (growth without a deadline)."""
    created = await store.groups.create(org, group(1, deadline=_soon()))
    [member] = await store.groups.image_ids(created.id)
    await store.images.write_results(member, {"a": DONE, "b": DONE})
    await store.images.finalize(member)
    assert (await store.groups.get(created.id, org)).status is ImageStatus.COMPLETE
    await asyncio.sleep(0.2)  # past the deadline
    assert created.id not in await store.deadlines.due(time.time())


def _soon() -> datetime:
    return utcnow() + timedelta(seconds=0.1)


async def test_retry_of_a_bulk_group_queues_one_bulk_job_of_its_failures(settings: Settings, org: str) -> None:
    store = Store.from_settings(settings.model_copy(update={"bulk_threshold": 2}))
    try:
        created = await store.groups.create(org, group(3))
        ok, failed, broken = await store.groups.image_ids(created.id)
        for image_id, result in ((ok, DONE), (failed, FAILED)):
            for name in ("a", "b"):
                await store.images.write_model_result(image_id, name, result)
            await store.images.finalize(image_id)
        await store.images.write_image_error(broken, ErrorInfo(code=ErrorCode.FETCH_FAILED, message="x"))
        await store.images.finalize(broken)
        jobs = store.keys.job_queue(QueueName.BULK)
        before = await store.redis.llen(jobs.org_queue(org))
        await store.groups.retry(created.id, org)
        [job_id] = await store.redis.lrange(jobs.org_queue(org), before, -1)
        payload = json.loads(await store.redis.hget(jobs.job(job_id.decode()), "payload"))
        assert payload == {"group": created.id, "images": [failed, broken], "models": ["a", "b"]}
    finally:
        await store.close()
