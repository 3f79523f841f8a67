"""What announcing an image costs Redis (issue 11): ``finalize`` is one read and one script
(marks, the group's count and sums, the webhook), not a watched transaction with an increment
per aggregate sum; and that script still applies only to the image as it was read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from core.schemas import EventType, GroupCreate, GroupImage, ImageCreate, ImageStatus, ModelResult, ModelStatus
from core.settings import Settings
from core.store import Store
from serve_app.local import RedisServer

DONE = ModelResult(status=ModelStatus.COMPLETE, version="v@1", result={"score": 4, "confidence": 0.5})
SCORES = ["condition_score", "quality_score"]


@pytest.fixture(scope="module")
def quiet_redis() -> Iterator[RedisServer]:
    """A redis-server of this module's own: commandstats count every client of a server, and the
    session's is shared with the stack's loops (a claim or renew landing inside a count failed it)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def settings(settings: Settings, quiet_redis: RedisServer) -> Settings:
    """The session's settings on the quiet server (the conftest's ``group_store`` and ``redis``
    build on them)."""
    return settings.model_copy(update={"redis_url": quiet_redis.url})


async def commands(redis: Redis, work: Awaitable[Any]) -> Counter[str]:
    """The commands Redis ran for ``work`` (those inside scripts too), this test's own left out."""
    await redis.config_resetstat()
    await work
    stats = await redis.info("commandstats")
    calls = Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})
    for own in ("config|resetstat", "info"):
        calls.pop(own, None)
    # A script new to this Redis answers NOSCRIPT once, is loaded and run again: one call.
    calls["evalsha"] -= calls.pop("script|load", 0)
    return calls


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
    # the script: the image's marks, the group's count, its sums; then settle's progress marks
    assert calls["hset"] <= 4 and calls["evalsha"] == 1, calls
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
