"""The processor reserves each image's decode raster in the pixel budget (issue 15, item 7):
an image holds its pixels from before its decode until every model has it, so the budget bounds
how many decoded images a replica holds at once, whatever the other stages allow.

A processor of its own key prefix, in this process, against the session stack's real detector
and a loopback image host.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.schemas import ImageCreate, ImageStatus
from core.store import Store
from core.tokens import new_id
from deployments.processor import Processor
from imaging import decode_pixels
from serve_app.stack import LocalStack
from tests.conftest import png_bytes
from tests.support.engine import CountingHost, model_handles

MODEL = "object_detection"
IMAGES = 4
pytestmark = pytest.mark.timeout(120)


async def test_a_budget_of_one_raster_lets_one_decoded_image_at_a_time_reach_the_models(
    stack: LocalStack, org: str, counting_host: CountingHost
) -> None:
    pictures = [png_bytes(96, 64, seed=80 + i) for i in range(IMAGES)]
    raster = decode_pixels(pictures[0], stack.settings.max_image_side)
    assert raster == 96 * 64
    settings = stack.settings.model_copy(update={"key_prefix": new_id("swpx"), "engine_pixel_budget": raster})
    store = Store.from_settings(settings)
    processor = Processor(settings, model_handles(MODEL))
    pixels = processor.limits.pixels
    assert processor.limits.models[MODEL].free >= IMAGES  # the model stage alone would take them all
    grants: list[int] = []
    acquire = pixels.acquire

    async def recorded_acquire(flow: str, cost: int = 1, key: Any = None) -> Any:
        grants.append(cost)
        return await acquire(flow, cost, key)

    pixels.acquire = recorded_acquire  # type: ignore[method-assign]
    inside, most_inside, free_at_calls = 0, 0, []
    call_model = processor._call_model

    async def watched_call(name: str, image: Any) -> dict[str, Any]:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        free_at_calls.append(pixels.free)
        try:
            await asyncio.sleep(0.2)  # long enough for the other images' decodes to be ready
            return await call_model(name, image)
        finally:
            inside -= 1

    processor._call_model = watched_call  # type: ignore[method-assign]
    try:
        records = [await store.images.create(org, ImageCreate(url=counting_host.put(f"/px/{i}.png", data),
                                                              models=[MODEL]))
                   for i, data in enumerate(pictures)]
        await asyncio.gather(*(processor.process_image(org, r.id, [MODEL]) for r in records))
        done = [await store.images.get(r.id) for r in records]
    finally:
        await processor.stop()
        await store.close()
    assert [d.status for d in done] == [ImageStatus.COMPLETE] * IMAGES
    assert grants == [raster] * IMAGES  # each image asked for its own raster, read from the header
    assert most_inside == 1, most_inside  # the budget, not the model stage, bounded the images held
    assert free_at_calls == [0] * IMAGES  # an image's pixels stay reserved while its model runs
    assert pixels.free == raster  # and are given back once every model has it
