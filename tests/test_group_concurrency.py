"""Concurrent growth of a group (SPEC §4): any interleaving of image/group ``add_models``,
``add_images`` and finalize leaves counts equal to a recount, every requested model on every
image, and one ``group.completed`` per completion, sent only when every image is terminal.

Many rounds of ``asyncio.gather`` over random operations on one real redis, so the check does
not depend on one lucky ordering."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Awaitable

import pytest

from core.schemas import (
    ErrorCode,
    ErrorInfo,
    EventType,
    GroupCreate,
    GroupImage,
    GroupRecord,
    ModelResult,
    ModelStatus,
)
from core.settings import Settings
from core.store import Store
from core.store.groups import GroupFull
from core.tokens import new_id

BASE = ["room_classification", "condition_score", "quality_score"]
EXTRA = ["object_detection", "x_a", "x_b", "x_c", "x_d", "x_e"]
ROUNDS, OPS = 6, 40
LIMIT = 20


@pytest.fixture
async def growth_store(settings: Settings):
    update = {"key_prefix": new_id("gc"), "group_progress_interval_s": 0.0, "max_group_images": LIMIT}
    store = Store.from_settings(settings.model_copy(update=update))
    yield store
    await store.close()


def images(n: int) -> list[GroupImage]:
    return [GroupImage(url=f"http://example.com/{new_id('p')}.jpg") for _ in range(n)]


async def finish(store: Store, image_id: str, fail: bool) -> list:
    """What a processor does: write a result for every queued model (or an error), then finalize."""
    record = await store.images.get(image_id)
    await store.images.mark_started(image_id, 10, 10)
    if fail:
        await store.images.write_image_error(image_id, ErrorInfo(code=ErrorCode.NOT_AN_IMAGE, message="x"))
    for name, result in record.models.items():
        if result.status is ModelStatus.QUEUED:
            done = ModelResult(status=ModelStatus.COMPLETE, version="v@1", result={"score": 3, "confidence": 1.0})
            await store.images.write_model_result(image_id, name, done)
    return (await store.images.finalize(image_id))[1]


async def test_any_interleaving_keeps_the_group_consistent(growth_store: Store, org: str) -> None:
    store, rng = growth_store, random.Random(15)
    request = GroupCreate(images=images(4), models=BASE, webhook_url="http://example.com/hook")
    group = await store.groups.create(org, request)
    requested, announced = set(BASE), []

    for _ in range(ROUNDS):
        ids = await store.groups.image_ids(group.id)
        ops: list[Awaitable] = []
        for _ in range(OPS):
            kind = rng.random()
            if kind < 0.45:
                ops.append(finish(store, rng.choice(ids), fail=rng.random() < 0.15))
            elif kind < 0.7:
                models = rng.sample(EXTRA, 2)
                requested.update(models)
                ops.append(store.groups.add_models(group.id, org, models))
            elif kind < 0.75:
                ops.append(store.groups.add_images(group.id, org, images(1)))  # stays under LIMIT
            else:
                ops.append(store.images.add_models(rng.choice(ids), org, rng.sample(EXTRA, 1)))
        for outcome in await asyncio.gather(*ops, return_exceptions=True):
            assert not isinstance(outcome, BaseException), outcome
            if isinstance(outcome, list):
                announced += outcome

    ids = await store.groups.image_ids(group.id)
    for deliveries in await asyncio.gather(*(finish(store, i, fail=False) for i in ids)):
        announced += deliveries

    records = await store.images.get_many(ids)
    final = await store.groups.get(group.id, org)
    assert len(records) == len(ids) == final.counts.total
    assert all(r.status.is_terminal for r in records)
    assert all(requested <= set(r.models) for r in records), "a requested model is missing on an image"
    assert set(final.models) == requested and len(final.models) == len(requested)
    recount = Counter(r.status.value for r in records)
    counts = final.counts
    assert (counts.complete, counts.partial, counts.failed, counts.pending) == (
        recount["complete"], recount["partial"], recount["failed"], 0
    ), f"counts {counts} != recount {dict(recount)}"

    group_events = [d for d in announced if d.resource_id == group.id]
    assert [d.event_type for d in group_events].count(EventType.GROUP_COMPLETED) == 1
    for delivery in group_events:
        data = json.loads(delivery.body)["data"]
        if delivery.event_type is EventType.GROUP_PROGRESS:
            continue
        assert data["counts"]["pending"] == 0
        assert len(data["images"]) == data["counts"]["total"]
        assert all(image["status"] in ("complete", "partial", "failed") for image in data["images"])
    assert max(d.sequence for d in group_events) == final.sequence, "the final state was not announced"


async def test_the_size_limit_holds_under_concurrent_adds(growth_store: Store, org: str) -> None:
    store = growth_store
    group = await store.groups.create(org, GroupCreate(images=images(4), models=BASE))
    outcomes = await asyncio.gather(
        *(store.groups.add_images(group.id, org, images(12)) for _ in range(4)), return_exceptions=True
    )
    final = await store.groups.get(group.id, org)
    assert final.counts.total <= LIMIT and len(final.image_ids) == final.counts.total
    assert sum(isinstance(o, GroupRecord) for o in outcomes) == 1
    assert all(isinstance(o, GroupRecord | GroupFull) for o in outcomes), outcomes
