"""What announcing an image costs Redis (issue 11): ``finalize`` is one read and one script
(marks, the group's count and sums, the webhook), not a watched transaction with an increment
per aggregate sum; and that script still applies only to the image as it was read."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from redis.asyncio import Redis

from core.schemas import (
    ErrorCode,
    ErrorInfo,
    EventType,
    GroupCreate,
    GroupImage,
    GroupRecord,
    ImageCreate,
    ImageStatus,
    ModelResult,
    ModelStatus,
)
from core.settings import Settings
from core.store import Store
from core.tokens import new_id
from serve_app.local import RedisServer
from tests.support.commands import commands

DONE = ModelResult(status=ModelStatus.COMPLETE, version="v@1", result={"score": 4, "confidence": 0.5})
SCORES = ["condition_score", "quality_score"]


@pytest.fixture(scope="module")
def settings(settings: Settings, quiet_redis: RedisServer) -> Settings:
    """The session's settings on the quiet server (the conftest's ``group_store`` and ``redis``
    build on them)."""
    return settings.model_copy(update={"redis_url": quiet_redis.url})


async def test_finalize_is_one_read_and_one_script(group_store: Store, redis: Redis, org: str) -> None:
    record = await group_store.images.create(org, ImageCreate(url="https://example.com/a.png", models=SCORES,
                                                             webhook_url="https://example.com/hook"))
    await group_store.images.write_results(record.id, {m: DONE for m in SCORES}, (4, 4))
    calls = await commands(redis, group_store.images.finalize(record.id))
    assert calls["hgetall"] == 1 and calls["evalsha"] == 1, calls
    assert not {"watch", "multi", "exec", "eval"} & set(calls), calls
    [delivery] = await group_store.outbox.for_resource(record.id)
    assert delivery.event_type is EventType.IMAGE_COMPLETED


async def test_a_group_image_moves_its_sums_in_one_write(group_store: Store, redis: Redis, org: str) -> None:
    group = await group_store.groups.create(org, GroupCreate(
        images=[GroupImage(url=f"https://example.com/{i}.png") for i in range(2)], models=SCORES))
    first = (await group_store.groups.image_ids(group.id))[0]
    await group_store.images.write_results(first, {m: DONE for m in SCORES}, (4, 4))
    calls = await commands(redis, group_store.images.finalize(first))
    assert "hincrbyfloat" not in calls and "hincrby" not in calls, calls  # 10 sums and 2 counts before
    # the finalize script: the image's marks, the group's count, its sums; then settle's snapshot
    # read (one MULTI of reads) and its script: the progress marks; no watched transaction
    assert calls["hset"] <= 4 and calls["evalsha"] == 2 and calls["exec"] == 1, calls
    assert "watch" not in calls, calls
    after = await group_store.groups.get(group.id, org)
    assert (after.counts.complete, after.counts.pending) == (1, 1)
    assert after.aggregates.overall.count == 1 and after.aggregates.overall.condition_mean == 4.0
    assert after.aggregates.overall.condition_weighted_mean == 4.0


async def test_finalize_reads_again_when_the_image_moved_after_its_read(group_store: Store, org: str) -> None:
    """A write between finalize's read and its script makes the script refuse; finalize reads
    again and announces the newer state, once, with its sequence."""
    record = await group_store.images.create(org, ImageCreate(url="https://example.com/b.png", models=SCORES,
                                                             webhook_url="https://example.com/hook"))
    await group_store.images.write_results(record.id, {m: DONE for m in SCORES}, (4, 4))
    outbox = group_store.outbox
    real = outbox.run_with
    applied: list[Any] = []
    better = ModelResult(status=ModelStatus.COMPLETE, version="v@2", result={"score": 5, "confidence": 0.9})

    async def moved_first(*args: Any) -> Any:
        if not applied:  # a late write lands between the read and the script
            await group_store.images.write_results(record.id, {"quality_score": better})
        applied.append(await real(*args))
        return applied[-1]

    outbox.run_with = moved_first  # type: ignore[method-assign]
    finished, _ = await group_store.images.finalize(record.id)
    assert applied == [0, 1]
    stored = await group_store.images.get(record.id)
    assert stored.status is ImageStatus.COMPLETE and finished.sequence == stored.sequence
    assert finished.models["quality_score"].version == "v@2"
    assert [d.sequence for d in await outbox.for_resource(record.id)] == [stored.sequence]


async def engine_view(store: Store, org: str) -> tuple[str, dict[str, str]]:
    """An image with a webhook, one of its two models done, and the hash as the engine holds it:
    its read, then its own write (``Written``) taken in."""
    record = await store.images.create(org, ImageCreate(url="https://example.com/v.png", models=SCORES,
                                                       webhook_url="https://example.com/hook"))
    _, fields = await store.images.read(record.id)
    written = await store.images.write_results(record.id, {SCORES[0]: DONE}, (4, 4))
    assert written is not None and written.seq == int(fields["seq"]) + 1
    return record.id, fields | written.fields


async def test_the_engines_last_results_go_in_the_announcement_unread(
    group_store: Store, redis: Redis, org: str
) -> None:
    image_id, view = await engine_view(group_store, org)
    calls = await commands(redis, group_store.images.finalize(image_id, view, {SCORES[1]: DONE}))
    assert calls["evalsha"] == 1 and "hgetall" not in calls, calls  # before: a write, a read, the script
    stored = await group_store.images.get(image_id)
    assert stored.status is ImageStatus.COMPLETE and stored.models[SCORES[1]] == DONE
    assert stored.sequence == int(view["seq"]) + 1
    [delivery] = await group_store.outbox.for_resource(image_id)
    assert delivery.event_type is EventType.IMAGE_COMPLETED and delivery.sequence == stored.sequence


async def test_results_held_on_a_view_another_write_made_stale_are_written_and_announced(
    group_store: Store, org: str
) -> None:
    image_id, view = await engine_view(group_store, org)
    await group_store.images.add_models(image_id, org, ["object_detection"])  # moves the image
    finished, deliveries = await group_store.images.finalize(image_id, view, {SCORES[1]: DONE})
    stored = await group_store.images.get(image_id)
    assert stored.models[SCORES[1]] == DONE  # written alone, then read again
    assert finished.sequence == stored.sequence and stored.status is ImageStatus.PROCESSING
    assert deliveries == []  # a new model is queued: nothing finished to announce


async def test_a_view_that_shows_nothing_to_announce_is_checked_by_a_read(group_store: Store, org: str) -> None:
    """A view that missed a write (here, the image's error) shows an unfinished image: that is
    not taken as "announced already", the image is read and its failure announced."""
    image_id, view = await engine_view(group_store, org)
    await group_store.images.write_image_error(image_id, ErrorInfo(code=ErrorCode.HTTP_ERROR, message="HTTP 404"))
    finished, [delivery] = await group_store.images.finalize(image_id, view)
    assert finished.status is ImageStatus.FAILED and delivery.event_type is EventType.IMAGE_FAILED


async def test_results_held_for_an_image_canceled_meanwhile_are_dropped(group_store: Store, org: str) -> None:
    image_id, view = await engine_view(group_store, org)
    await group_store.images.cancel(image_id, org)
    await group_store.images.finalize(image_id, view, {SCORES[1]: DONE})
    stored = await group_store.images.get(image_id)
    assert stored.status is ImageStatus.CANCELED and stored.models[SCORES[1]].status is ModelStatus.QUEUED
    [canceled] = await group_store.outbox.for_resource(image_id)  # the cancel's; no second one
    assert canceled.sequence == stored.sequence


async def test_a_group_image_with_nothing_due_is_not_settled_again(group_store: Store, redis: Redis, org: str) -> None:
    """The finalize script returns the group as it left it, so a finish that makes no group event
    due (progress throttled, images still pending) costs no WATCH and no re-read of the group; the
    finish that completes the group still announces it, once."""
    group = await group_store.groups.create(org, GroupCreate(
        images=[GroupImage(url=f"https://example.com/{i}.png") for i in range(3)], models=SCORES,
        webhook_url="https://example.com/group-hook"))
    ids = await group_store.groups.image_ids(group.id)
    for image_id in ids:
        await group_store.images.write_results(image_id, {m: DONE for m in SCORES}, (4, 4))
    await group_store.images.finalize(ids[0])  # the first progress is due: announced
    calls = await commands(redis, group_store.images.finalize(ids[1]))  # the next is throttled (60 s)
    # the image's read, and the script (its group HGETALL counts too: Redis counts inner commands)
    assert calls["hgetall"] == 2 and calls["evalsha"] == 1, calls
    assert not {"watch", "unwatch", "multi", "exec"} & set(calls), calls
    await group_store.images.finalize(ids[2])
    events = [d.event_type for d in await group_store.outbox.for_resource(group.id)]
    assert events == [EventType.GROUP_PROGRESS, EventType.GROUP_COMPLETED], events


def grow_on_first_read(store: Store, settings: Settings, group_id: str, org: str) -> list[EventType | None]:
    """Make ``store``'s settle see another client add an image to the group right after its
    first read of the group (before it commits), and return the events each read found due."""
    events = store.groups.ledger._events
    real, found_due = events.group_due, []

    async def grow() -> None:
        other = Store.from_settings(settings)
        try:
            await other.groups.add_images(group_id, org, [GroupImage(url="https://example.com/new.png")])
        finally:
            await other.close()

    def due_then_grow(record: GroupRecord, *args: Any) -> Any:
        due = real(record, *args)
        if record.aggregates.overall.count == 0:  # decided on the finalize script's state: no read
            return due
        found_due.append(due.event if due else None)  # decided on a read of the group and its sums
        if len(found_due) == 1:  # done before settle goes on to commit
            growing = threading.Thread(target=asyncio.run, args=(grow(),))
            growing.start()
            growing.join()
        return due

    events.group_due = due_then_grow  # type: ignore[method-assign]
    return found_due


async def finished_group(settings: Settings, org: str, images: int) -> tuple[Store, str, str]:
    """A store on a prefix of its own, a group of ``images`` with a webhook, its first image done."""
    store = Store.from_settings(settings)
    group = await store.groups.create(org, GroupCreate(
        images=[GroupImage(url=f"https://example.com/{i}.png") for i in range(images)], models=SCORES,
        webhook_url="https://example.com/group-hook"))
    first = (await store.groups.image_ids(group.id))[0]
    await store.images.write_results(first, {m: DONE for m in SCORES}, (4, 4))
    return store, group.id, first


async def test_a_group_change_during_a_progress_announcement_does_not_start_it_over(
    settings: Settings, org: str
) -> None:
    """Under a WATCH of the group, every write to it between settle's read and its commit (each
    other image's finish is one) aborted the progress announcement: a burst of 100 finishes made
    615 attempts at one event. A progress event now commits with the counts it read."""
    own = settings.model_copy(update={"key_prefix": new_id("g")})
    store, group_id, first = await finished_group(own, org, images=2)
    found_due = grow_on_first_read(store, own, group_id, org)
    try:
        await store.images.finalize(first)
        assert found_due == [EventType.GROUP_PROGRESS], found_due  # one read of the group, one commit
        [progress] = await store.outbox.for_resource(group_id)
        assert progress.event_type is EventType.GROUP_PROGRESS
        assert (await store.groups.get(group_id, org)).counts.total == 3  # the growth landed
    finally:
        await store.close()


async def test_a_completion_is_not_announced_for_a_group_that_grew_before_it_committed(
    settings: Settings, org: str
) -> None:
    """``group.completed`` speaks for the whole group: when an image joins between the read that
    found the group complete and the commit, the announcement starts over and finds it running."""
    own = settings.model_copy(update={"key_prefix": new_id("g")})
    store, group_id, only = await finished_group(own, org, images=1)
    found_due = grow_on_first_read(store, own, group_id, org)
    try:
        await store.images.finalize(only)
        assert found_due == [EventType.GROUP_COMPLETED, EventType.GROUP_PROGRESS], found_due
        assert [d.event_type for d in await store.outbox.for_resource(group_id)] == [EventType.GROUP_PROGRESS]
    finally:
        await store.close()
