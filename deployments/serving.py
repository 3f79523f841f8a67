"""What every model deployment shares: CPU preparation per request, tensor work per batch.

A request carries one decoded image. ``predict`` prepares it (resize/crop, in a worker thread,
so the event loop keeps admitting requests) and hands the small fixed-size array to the
``@serve.batch`` method, which runs the whole batch in one forward pass in another thread. While
a batch is in the model, the next batch's images are being prepared and queued: the CPU work
and the tensor work overlap, and a batch is complete the moment the model is free.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import torch
from ray import serve

from core.registry import ModelSpec
from core.schemas import ModelInfo
from deployments.images import DecodedImage
from deployments.runner import ModelRunner, Prepared

log = logging.getLogger("sightwire.models")


class BatchedModel:
    """Base of every model-family deployment; subclasses load their runner in ``__init__``."""

    runner: ModelRunner

    def _serve(self, runner: ModelRunner, spec: ModelSpec) -> None:
        self.runner = runner
        self._infer.set_max_batch_size(spec.batching.max_batch_size)
        self._infer.set_batch_wait_timeout_s(spec.batching.batch_wait_timeout_s)
        log.info("%s loaded on %s with %d torch threads", runner.version, runner.info().device,
                 torch.get_num_threads())

    def info(self) -> ModelInfo:
        return self.runner.info()

    async def predict(self, image: DecodedImage) -> dict[str, Any]:
        prepared = await asyncio.to_thread(self.runner.prepare, image)
        return await self._infer(prepared)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _infer(self, batch: list[Prepared]) -> list[dict[str, Any]]:
        results = await asyncio.to_thread(self.runner.run, batch)
        return [{"version": self.runner.version, "result": r} for r in results]
