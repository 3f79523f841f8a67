"""Every registry model as a Serve deployment: one generic class, options from its ``ModelSpec``.

A request carries one decoded image (``predict``) or several (``predict_many``, what the
processor's ``ModelClient`` sends). Each image is prepared (resize/crop, in a worker thread, so
the event loop keeps admitting requests) and the small fixed-size array goes to the replica's
``Batcher``, which runs whole batches, one at a time, in the inference thread. While a batch is
in the model, the next requests are being prepared and queued: the CPU work and the tensor work
overlap, and the next batch is as full as the queue allows the moment the model is free.

The runner comes from the task → family table (``models.families.load_runner``), so the
deployment is the same class for every family; ``bind_model`` names it ``model-<name>`` and
gives it the model's own autoscaling and resources.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
import torch
from ray import serve
from ray.serve.deployment import Application

from core.failures import describe
from core.metrics import ModelMetrics
from core.placement import cluster_gpus, fit_to_cluster
from core.registry import ModelSpec, Registry
from core.schemas import ModelInfo
from core.settings import GpuPolicy
from deployments.batcher import Batcher
from imaging import DecodedImage
from models.base import Prepared
from models.families import load_runner

log = logging.getLogger("sightwire.models")

# Serve notices a dead replica through its health check; a short period replaces it sooner.
HEALTH_CHECK_PERIOD_S = 2.0


@serve.deployment(max_ongoing_requests=64)
class ModelDeployment:
    """One replica of one registry model: its runner, and a batcher in front of ``run``."""

    def __init__(self, spec: ModelSpec) -> None:
        self.runner = load_runner(spec)
        self.metrics = ModelMetrics(spec.name)
        self.batcher: Batcher[Prepared, dict[str, Any]] = Batcher(
            self._run, spec.batching.max_batch_size, spec.batching.batch_wait_timeout_s
        )
        log.info("%s loaded on %s with %d torch threads", self.runner.version, self.runner.info().device,
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
            out.append({"error": describe(answer)} if isinstance(answer, BaseException) else answer)
        return out

    def _prepare_all(self, images: list[DecodedImage]) -> list[Prepared | Exception]:
        out: list[Prepared | Exception] = []
        for image in images:
            try:
                out.append(self.runner.prepare(image))
            except Exception as exc:  # this image only
                out.append(exc)
        return out

    def _run(self, batch: list[Prepared]) -> list[dict[str, Any]]:
        with self.metrics.batch(len(batch)):
            results = self.runner.run(batch)
        return [{"version": self.runner.version, "result": r} for r in results]


def max_ongoing_requests(spec: ModelSpec) -> int:
    """A replica must accept at least a full batch, twice, to fill the next while one runs,
    and at least the autoscaling target, or the target could never be reached."""
    batch = spec.batching.max_batch_size
    return max(2 * batch, int(spec.autoscaling.target_ongoing_requests + 0.999), 8)


def bind_model(spec: ModelSpec) -> Application:
    """A bound deployment for ``spec``: its own autoscaling on its own queue, its resources."""
    return ModelDeployment.options(
        name=spec.deployment_name,
        max_ongoing_requests=max_ongoing_requests(spec),
        autoscaling_config={
            "min_replicas": spec.autoscaling.min_replicas,
            "max_replicas": spec.autoscaling.max_replicas,
            "target_ongoing_requests": spec.autoscaling.target_ongoing_requests,
        },
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        ray_actor_options={"num_cpus": spec.resources.num_cpus, "num_gpus": spec.resources.num_gpus},
    ).bind(spec)


def bind_models(registry: Registry, gpu_policy: GpuPolicy) -> dict[str, Application]:
    """One deployment per model, each GPU ask fitted to the cluster (``core.placement``)."""
    specs = fit_to_cluster(list(registry.models.values()), gpu_policy, cluster_gpus())
    return {spec.name: bind_model(spec) for spec in specs}
