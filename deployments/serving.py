"""What every model deployment shares: CPU preparation per request, tensor work per batch.

A request carries one decoded image. ``predict`` prepares it (resize/crop, in a worker thread,
so the event loop keeps admitting requests) and hands the small fixed-size array to the
replica's ``Batcher``, which runs whole batches, one at a time, in the inference thread. While a
batch is in the model, the next requests are being prepared and queued: the CPU work and the
tensor work overlap, and the next batch is as full as the queue allows the moment the model is
free.

Why not ``@serve.batch``: in Ray Serve 2.60 its loop forms the next batch every
``batch_wait_timeout_s`` whether or not the model is free, and queues it behind the running one.
Under load the model then works through many small batches (measured on the bench CLIP model
with 32 requests in flight and ``max_batch_size`` 16: batches of 1-7, each request waiting
~600 ms behind them), which throws away exactly the throughput batching is for. ``Batcher``
forms a batch only when the model can take it: under load every batch is full, and a lone
request still goes after at most ``batch_wait_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import ray
import torch

from core.registry import ModelSpec
from core.schemas import ModelInfo
from deployments.images import DecodedImage
from deployments.runner import ModelRunner

log = logging.getLogger("sightwire.models")

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Gathers single items into batches for ``run``, forming a batch only when ``run`` is free.

    ``run`` takes a list and returns one result per item; it runs in one dedicated thread, so a
    batch never waits behind other work of the replica's thread pool. A batch closes when it
    holds ``max_batch_size`` items or when its first item has waited ``wait_s`` (time spent
    behind a running batch counts: a request never waits twice). Cancelled requests are
    skipped; an exception from ``run`` fails every request of that batch."""

    def __init__(self, run: Callable[[list[Item]], list[Result]], max_batch_size: int, wait_s: float) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self._queue: list[tuple[Item, asyncio.Future[Result], float]] = []
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.batches = 0
        self.items = 0

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._work())
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.append((item, future, loop.time()))
        self._arrived.set()  # type: ignore[union-attr]
        return await future

    async def _next_batch(self) -> list[tuple[Item, asyncio.Future[Result], float]]:
        loop = asyncio.get_running_loop()
        arrived = self._arrived
        assert arrived is not None
        while not self._queue:
            arrived.clear()
            await arrived.wait()
        deadline = self._queue[0][2] + self.wait_s
        while len(self._queue) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), remaining)
            except TimeoutError:
                break
        batch, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size :]
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [entry for entry in await self._next_batch() if not entry[1].done()]
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            try:
                results = await loop.run_in_executor(self._thread, self._run, [item for item, _, _ in batch])
            except Exception as exc:  # the model failed this batch: its requests fail, the next go on
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future, _), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    def stats(self) -> dict[str, float]:
        return {"batches": self.batches, "items": self.items,
                "mean_batch_size": self.items / self.batches if self.batches else 0.0}


class BatchedModel:
    """Base of every model-family deployment; subclasses load their runner in ``__init__``."""

    runner: ModelRunner
    batcher: Batcher[Any, dict[str, Any]]

    def _serve(self, runner: ModelRunner, spec: ModelSpec) -> None:
        self.runner = runner
        self.batcher = Batcher(self._run, spec.batching.max_batch_size, spec.batching.batch_wait_timeout_s)
        log.info("%s loaded on %s with %d torch threads", runner.version, runner.info().device,
                 torch.get_num_threads())

    def info(self) -> ModelInfo:
        return self.runner.info()

    def batch_stats(self) -> dict[str, float]:
        """Batches run by this replica so far and their mean size (how well batching fills)."""
        return self.batcher.stats()

    async def predict(self, image: DecodedImage) -> dict[str, Any]:
        prepared = await asyncio.to_thread(self.runner.prepare, image)
        return await self.batcher.submit(prepared)

    async def predict_many(self, images: list[DecodedImage | ray.ObjectRef]) -> list[dict[str, Any]]:
        """One answer per image, in order: ``{"version", "result"}``, or ``{"error"}`` for an
        image the model failed on (the others still get theirs). Images may be ``ObjectRef``s
        (one object-store copy shared by every model the image goes to)."""
        refs = [i for i, image in enumerate(images) if isinstance(image, ray.ObjectRef)]
        if refs:
            resolved = await asyncio.gather(*(images[i] for i in refs))
            images = list(images)
            for i, image in zip(refs, resolved, strict=True):
                images[i] = image
        prepared = await asyncio.to_thread(self._prepare_all, images)  # type: ignore[arg-type]
        answers = await asyncio.gather(
            *(self.batcher.submit(p) for p in prepared if not isinstance(p, Exception)), return_exceptions=True
        )
        done = iter(answers)
        out = []
        for p in prepared:
            answer = p if isinstance(p, Exception) else next(done)
            out.append({"error": f"{type(answer).__name__}: {answer}"[:500]} if isinstance(answer, BaseException)
                       else answer)
        return out

    def _prepare_all(self, images: list[DecodedImage]) -> list[Any]:
        out: list[Any] = []
        for image in images:
            try:
                out.append(self.runner.prepare(image))
            except Exception as exc:  # this image only
                out.append(exc)
        return out

    def _run(self, batch: list[Any]) -> list[dict[str, Any]]:
        return [{"version": self.runner.version, "result": r} for r in self.runner.run(batch)]
