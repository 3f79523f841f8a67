"""Groups in the store: counts and aggregates move incrementally; events are announced once."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from core import aggregates
from core.schemas import (
    ErrorCode,
    ErrorInfo,
    EventType,
    GroupCreate,
    GroupImage,
    ImageRecord,
    ImageStatus,
    ModelResult,
    ModelStatus,
)
from core.settings import Settings
from core.store import Job, Store
from core.store.fair_queue import new_token
from core.tokens import new_id

MODELS = ["room_classification", "condition_score", "quality_score"]


def done(result: dict) -> ModelResult:
    return ModelResult(status=ModelStatus.COMPLETE, version="v@1", result=result)


async def finish(store: Store, image_id: str, room: str, condition: int, quality: int, confidence: float) -> list:
    await store.images.mark_started(image_id, 10, 10)
    await store.images.write_model_result(image_id, "room_classification", done({"label": room, "confidence": 0.9}))
    for model, score in (("condition_score", condition), ("quality_score", quality)):
        await store.images.write_model_result(image_id, model, done({"score": score, "confidence": confidence}))
    return (await store.images.finalize(image_id))[1]


def group_request(n: int, **extra: object) -> GroupCreate:
    images = [GroupImage(url=f"http://example.com/{i}.jpg", external_id=f"photo-{i}") for i in range(n)]
    return GroupCreate(images=images, models=MODELS, webhook_url="http://example.com/hook", **extra)


async def test_counts_aggregates_and_events(group_store: Store, org: str) -> None:
    store = group_store
    group = await store.groups.create(org, group_request(4))
    assert group.status is ImageStatus.QUEUED and group.counts.total == 4 and group.counts.pending == 4
    ids = await store.groups.image_ids(group.id)
    assert len(ids) == 4

    first = await finish(store, ids[0], "kitchen", 2, 3, 1.0)
    assert [d.event_type for d in first] == [EventType.GROUP_PROGRESS]  # image webhooks: none in a group
    second = await finish(store, ids[1], "kitchen", 4, 5, 0.5)
    assert second == []  # progress is throttled
    await finish(store, ids[2], "bedroom", 3, 3, 1.0)
    await store.images.write_image_error(ids[3], ErrorInfo(code=ErrorCode.NOT_AN_IMAGE, message="x"))
    [completed] = (await store.images.finalize(ids[3]))[1]
    assert completed.event_type is EventType.GROUP_COMPLETED

    record = await store.groups.get(group.id, org)
    assert record.status is ImageStatus.PARTIAL
    assert (record.counts.complete, record.counts.failed, record.counts.pending) == (3, 1, 0)
    overall, kitchen = record.aggregates.overall, record.aggregates.by_room["kitchen"]
    assert overall.count == 3 and record.aggregates.failed_excluded == 1
    assert overall.condition_mean == pytest.approx((2 + 4 + 3) / 3, abs=1e-3)
    assert kitchen.count == 2 and kitchen.condition_mean == pytest.approx(3.0)
    assert kitchen.condition_weighted_mean == pytest.approx((2 * 1.0 + 4 * 0.5) / 1.5, abs=1e-3)
    assert kitchen.quality_weighted_mean == pytest.approx((3 * 1.0 + 5 * 0.5) / 1.5, abs=1e-3)
    assert record.aggregates.by_room["bedroom"].quality_mean == pytest.approx(3.0)
    assert (await store.images.finalize(ids[3]))[1] == []  # nothing new to announce


async def test_adding_models_replaces_contributions(group_store: Store, org: str) -> None:
    store = group_store
    group = await store.groups.create(org, group_request(1, webhook_events=[EventType.GROUP_COMPLETED,
                                                                             EventType.GROUP_UPDATED]))
    [image_id] = await store.groups.image_ids(group.id)
    await finish(store, image_id, "kitchen", 2, 2, 1.0)
    record, added = await store.groups.add_models(group.id, org, ["object_detection", "condition_score"])
    assert added == ["object_detection"]
    assert record.counts.pending == 1 and record.status is ImageStatus.PROCESSING
    await store.images.write_model_result(image_id, "condition_score", done({"score": 5, "confidence": 1.0}))
    await store.images.write_model_result(image_id, "object_detection", done({"detections": []}))
    [updated] = (await store.images.finalize(image_id))[1]
    assert updated.event_type is EventType.GROUP_UPDATED
    final = await store.groups.get(group.id, org)
    assert final.counts.complete == 1 and final.aggregates.overall.count == 1
    assert final.aggregates.overall.condition_mean == pytest.approx(5.0)
    assert final.models == [*MODELS, "object_detection"]


async def test_add_images_reopens_the_group(group_store: Store, org: str) -> None:
    store = group_store
    group = await store.groups.create(org, group_request(1))
    [first] = await store.groups.image_ids(group.id)
    await finish(store, first, "kitchen", 3, 3, 1.0)
    grown = await store.groups.add_images(group.id, org, [GroupImage(url="http://example.com/new.jpg")])
    assert grown.counts.total == 2 and grown.status is ImageStatus.PROCESSING
    second = grown.image_ids[1]
    [event] = await finish(store, second, "bathroom", 4, 4, 1.0)
    assert event.event_type is EventType.GROUP_UPDATED
    assert (await store.groups.get(group.id, "org_other", )) is None


async def test_large_groups_get_one_bulk_job(settings: Settings, org: str) -> None:
    store = Store.from_settings(settings.model_copy(update={"key_prefix": new_id("g"), "bulk_threshold": 3}))
    try:
        group = await store.groups.create(org, group_request(5))
        assert group.bulk
        assert (await store.jobs.online.depth()).total == 0  # never in the online queue
        [claimed] = await store.jobs.bulk.claim(new_token(), 10, {}, 10)
        job = Job.from_payload(claimed.payload)
        assert job.group_id == group.id and len(job.image_ids) == 5 and job.models == MODELS
    finally:
        await store.close()


async def test_big_group_payload_goes_out_thin(settings: Settings, org: str) -> None:
    store = Store.from_settings(settings.model_copy(update={"key_prefix": new_id("g"),
                                                            "webhook_payload_cap_bytes": 2_000}))
    try:
        group = await store.groups.create(org, group_request(12))
        ids = await store.groups.image_ids(group.id)
        for image_id in ids:
            deliveries = await finish(store, image_id, "kitchen", 3, 3, 1.0)
        [completed] = deliveries
        data = json.loads(completed.body)["data"]
        assert data["thin"] is True and data["id"] == group.id and data["href"] == f"/v1/groups/{group.id}"
        assert data["counts"]["complete"] == 12 and data["sequence"] == completed.sequence
    finally:
        await store.close()


def test_contribution_excludes_failed_and_uses_unknown_room() -> None:
    now = datetime.now(UTC)
    record = ImageRecord(id="img", status=ImageStatus.COMPLETE, url="u", sequence=1, created_at=now, updated_at=now,
                         models={"condition_score": done({"score": 4, "confidence": 0.5})})
    parts = aggregates.contribution(record)
    assert parts["room:unknown|count"] == 1 and parts["all|condition_wsum"] == 2.0 and "all|quality_n" not in parts
    failed = record.model_copy(update={"status": ImageStatus.FAILED})
    assert aggregates.contribution(failed) == {}
    assert aggregates.delta(parts, {}) == {k: -v for k, v in parts.items()}
