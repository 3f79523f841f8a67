"""What the engine reads and writes per image (issue 11): the record once per job, not once per
model call nor again to announce it; the results of models that finish together in one write,
the last ones in the announcement's; and still, a cancel made while a model waits for its slot
stops that model before its call.

Processors of their own key prefix, in this process, against the session stack's real model
deployments and a loopback image host.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.schemas import ImageCreate, ImageStatus, ModelStatus
from core.store import Store
from core.tokens import new_id
from deployments.processor import Processor
from serve_app.stack import LocalStack
from tests.conftest import png_bytes
from tests.support.engine import CountingHost, model_handles, until

MODELS = ["object_detection", "room_classification", "condition_score", "quality_score"]
pytestmark = pytest.mark.timeout(120)


class Spy:
    """Counts the calls of one async method of an object (and keeps their arguments), and lets
    them through."""

    def __init__(self, owner: object, name: str) -> None:
        self.calls = 0
        self.args: list[tuple[Any, ...]] = []
        real = getattr(owner, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.args.append(args)
            return await real(*args, **kwargs)

        setattr(owner, name, counted)


async def test_one_read_per_job_and_results_finishing_together_in_one_write(
    stack: LocalStack, org: str, counting_host: CountingHost
) -> None:
    settings = stack.settings.model_copy(update={"key_prefix": new_id("swrd")})
    store = Store.from_settings(settings)
    processor = Processor(settings, model_handles(*MODELS))
    try:
        url = counting_host.put("/reads/a.png", png_bytes(seed=91))
        # a webhook no notifier serves: this prefix has none, the delivery stays queued
        record = await store.images.create(org, ImageCreate(url=url, models=MODELS,
                                                            webhook_url="https://example.com/hook"))
        reads = Spy(processor.store.images, "read")
        hashes = Spy(processor.store.redis, "hgetall")
        writes = Spy(processor.store.images, "write_results")
        finalizes = Spy(processor.store.images, "finalize")
        await processor.process_image(org, record.id, MODELS)
        done = await store.images.get(record.id)
        assert done.status is ImageStatus.COMPLETE, done
        assert all(m.status is ModelStatus.COMPLETE for m in done.models.values())
        assert reads.calls == 1  # the job's start; none before each of the four model calls
        assert hashes.calls == 1  # that one: finalize announces what the job's writes left, unread
        # object_detection, and the three CLIP heads of one backbone forward, which finish
        # together: at most two writes, and the last to finish goes in finalize's script instead
        assert writes.calls <= 2, writes.calls
        [(_, view, last)] = finalizes.args
        assert view is not None and last, (view, last)
        assert writes.calls + len(last) < len(MODELS)
        [delivery] = await store.outbox.for_resource(record.id)
        assert delivery.sequence == done.sequence
    finally:
        await processor.stop()
        await store.close()


async def test_a_cancel_while_a_model_waits_for_its_slot_stops_it_before_its_call(
    stack: LocalStack, org: str, counting_host: CountingHost
) -> None:
    model = "object_detection"
    settings = stack.settings.model_copy(update={"key_prefix": new_id("swrd")})
    store = Store.from_settings(settings)
    processor = Processor(settings, model_handles(model))
    limiter = processor.limits.models[model]
    held = [await limiter.acquire(f"org_other{i}") for i in range(limiter.free)]  # every slot taken
    calls = Spy(processor, "_call_model")
    try:
        url = counting_host.put("/reads/b.png", png_bytes(seed=92))
        record = await store.images.create(org, ImageCreate(url=url, models=[model]))
        job = asyncio.create_task(processor.process_image(org, record.id, [model]))

        async def started() -> bool:
            return (await store.images.get(record.id)).width is not None

        await until(started, 30, "the image is loaded and waits for its model's slot")
        await store.images.cancel(record.id, org)
        for grant in held:
            grant.release()
        await asyncio.wait_for(job, 30)
        stored = await store.images.get(record.id)
        assert stored.status is ImageStatus.CANCELED
        assert stored.models[model].status is ModelStatus.QUEUED
        assert calls.calls == 0
    finally:
        for grant in held:
            grant.release()
        await processor.stop()
        await store.close()
