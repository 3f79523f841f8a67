"""Batching that fills: the replica's Batcher and the processor's coalescing ModelClient."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from ray import serve

from core.registry import load_registry, serving_groups
from deployments.batcher import Batcher
from deployments.model_client import ModelClient
from deployments.serving import ModelDeployment
from imaging import DecodedImage
from models.zero_shot import ZeroShotClassifier
from serve_app.gateway import APP_NAME
from serve_app.stack import LocalStack
from tests.support.answers import assert_same_answer

CLIP_MODELS = ("room_classification", "condition_score", "quality_score")


class SlowModel:
    """A stand-in for a forward pass: takes ``seconds`` per batch, records the batch sizes."""

    def __init__(self, seconds: float, fail_on: int | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.sizes.append(len(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot handle {self.fail_on}")
        return [item * 10 for item in items]


async def test_batches_fill_while_the_model_is_busy() -> None:
    model = SlowModel(0.05)
    batcher = Batcher(model, max_batch_size=8, wait_s=0.01)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.02)  # the first batch (of one) is running now
    rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 17)]
    assert await first == 0
    assert await asyncio.gather(*rest) == [i * 10 for i in range(1, 17)]
    # everything that arrived while the model was busy went in full batches, not one per tick
    assert model.sizes == [1, 8, 8]
    assert len(model.threads) == 1 and next(iter(model.threads)).startswith("inference")
    assert batcher.stats()["mean_batch_size"] == pytest.approx(17 / 3)


async def test_a_lone_request_waits_at_most_the_batch_timeout() -> None:
    batcher = Batcher(SlowModel(0.0), max_batch_size=8, wait_s=0.05)
    started = time.perf_counter()
    assert await batcher.submit(3) == 30
    assert 0.04 <= time.perf_counter() - started < 0.5


async def test_a_failing_batch_fails_only_its_own_requests() -> None:
    model = SlowModel(0.03, fail_on=2)
    batcher = Batcher(model, max_batch_size=2, wait_s=0.01)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert isinstance(results[2], ValueError) and isinstance(results[3], ValueError)  # batch [2, 3]
    assert results[:2] == [0, 10]
    assert await batcher.submit(5) == 50  # the batcher goes on


async def test_cancelled_requests_are_skipped() -> None:
    model = SlowModel(0.05)
    batcher = Batcher(model, max_batch_size=4, wait_s=0.01)
    running = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0.02)
    doomed = asyncio.create_task(batcher.submit(1))
    kept = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    doomed.cancel()
    assert (await running, await kept) == (0, 20)
    assert model.sizes == [1, 1]


def photo(seed: int) -> DecodedImage:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(120 + seed, 160, 3), dtype=np.uint8)
    return DecodedImage(pixels=pixels, width=160, height=120 + seed)


def clip_deployment(stack: LocalStack) -> str:
    """The tiny profile's shared CLIP backbone deployment (its three zero-shot models)."""
    return load_registry("tiny", stack.settings.models_dir).deployment_of("condition_score")


@pytest.mark.integration
async def test_model_client_coalesces_and_answers_as_single_requests_do(stack: LocalStack) -> None:
    """Through the real deployment: 24 concurrent calls leave as a few multi-image requests
    (images by ObjectRef), and each image gets exactly the answer it gets alone."""
    handle = serve.get_deployment_handle(clip_deployment(stack), app_name=APP_NAME)
    client = ModelClient(handle, max_images=8, max_in_flight=1)
    images = [photo(seed) for seed in range(24)]
    together = await asyncio.gather(*(client.predict(ray.put(image), "condition_score") for image in images))
    alone = [await handle.predict.remote(image, "condition_score") for image in images[:6]]
    assert client.stats()["images"] == 24 and client.stats()["requests"] <= 6
    for one, many in zip(alone, together[:6], strict=True):
        assert one["version"] == many["version"]
        assert one["result"]["score"] == many["result"]["score"]
        assert one["result"]["distribution"] == pytest.approx(many["result"]["distribution"], abs=1e-5)


@pytest.mark.integration
async def test_the_shared_backbone_runs_one_forward_per_image_for_all_its_models(
    stack: LocalStack, tiny_models_dir: Path
) -> None:
    """The three zero-shot models are one deployment (one copy of the weights per replica):
    an image's calls for all three, together or one after another, cost one forward, and each
    model's answer is the one its own separate runner gives."""
    handle = serve.get_deployment_handle(clip_deployment(stack), app_name=APP_NAME)
    registry = load_registry("tiny", tiny_models_dir)
    separate = {name: ZeroShotClassifier(registry[name]) for name in CLIP_MODELS}
    assert [(await handle.info.remote(name)).version for name in CLIP_MODELS] == [
        separate[name].version for name in CLIP_MODELS]
    client = ModelClient(handle, max_images=3 * 8, max_in_flight=2)
    images = [photo(seed) for seed in range(100, 112)]
    refs = [ray.put(image) for image in images]
    before = (await handle.batch_stats.remote())["items"]
    together = await asyncio.gather(*(client.predict(ref, name) for ref in refs[:8] for name in CLIP_MODELS))
    one_by_one = [await client.predict(ref, name) for ref in refs[8:] for name in CLIP_MODELS]
    assert (await handle.batch_stats.remote())["items"] - before == len(images)  # not 3 x
    answers = iter([*together, *one_by_one])
    for image in images:
        for name in CLIP_MODELS:
            answer, [expected] = next(answers), separate[name].predict([image])
            assert answer["version"] == separate[name].version
            assert_same_answer(answer["result"], expected)


async def test_an_images_forward_outlives_a_cancelled_request_for_it(ray_session: None, tiny_models_dir: Path) -> None:
    """A replica shares an image's forward between requests: a request cancelled while the
    forward runs (its caller's deadline) must not cancel it for the next model of that image."""
    group = next(g for g in serving_groups(load_registry("tiny", tiny_models_dir).models.values()) if g.shared)
    replica = ModelDeployment.func_or_class(group)  # the replica's class, in this process
    ref = ray.put(photo(7))
    first = asyncio.create_task(replica.predict_many([ref], [["room_classification"]]))
    await asyncio.sleep(0)  # its forward is under way
    first.cancel()
    [answer] = await replica.predict_many([ref], [["quality_score"]])
    assert answer["quality_score"]["version"] == replica.runner.version_of("quality_score")
    assert 1 <= answer["quality_score"]["result"]["score"] <= 6
    assert replica.batch_stats()["items"] == 1  # one forward for both
    assert first.cancelled()
