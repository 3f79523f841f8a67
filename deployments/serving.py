"""Every registry model on a Serve deployment: one generic class, options from its serving group.

A deployment serves one ``core.registry.ModelGroup``: a model alone (``model-<name>``), or the
zero-shot models of one CLIP backbone together (``backbone-<its models, joined by +>``: one copy of the
weights per replica, one vision forward per image, each model a head on its embedding).

A request carries one decoded image (``predict``) or several, each with the models it wants
(``predict_many``, what the processor's ``ModelClient`` sends). Each image is prepared
(resize/crop, in a worker thread, so the event loop keeps admitting requests) and the small
fixed-size array goes to the replica's ``Batcher``, which runs the forward on whole batches, one
at a time, in the inference thread; each wanted model's head then reads the image's features.
While a batch is in the model, the next requests are being prepared and queued: the CPU work and
the tensor work overlap, and the next batch is as full as the queue allows the moment the model
is free. The features of recent object-store images are kept (``RECENT_FEATURES``), so the other
models of an image, which may come in another request, reuse its forward.

The runner comes from the task → family table (``models.families.load_group``), so the
deployment is the same class for every family; ``bind_models`` gives each group its
deployment, with the group's autoscaling and resources, under every member's name.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

import ray
import torch
from ray import serve
from ray.serve.deployment import Application

from core.failures import describe
from core.metrics import ModelMetrics
from core.placement import cluster_gpus, fit_to_cluster
from core.registry import ModelGroup, ModelSpec, Registry, serving_groups
from core.schemas import ModelInfo
from core.settings import GpuPolicy
from deployments.batcher import Batcher
from imaging import DecodedImage
from models.base import Prepared
from models.families import load_group

log = logging.getLogger("sightwire.models")

# Serve notices a dead replica through its health check; a short period replaces it sooner.
HEALTH_CHECK_PERIOD_S = 2.0


# Features of this many recent object-store images are kept per replica: the other models of an
# image (its other heads on a shared backbone) come in their own requests, moments later.
RECENT_FEATURES = 1024


@serve.deployment(max_ongoing_requests=64)
class ModelDeployment:
    """One replica of a serving group (one registry model, or several on one backbone): the
    group's runner, and a batcher in front of its forward."""

    def __init__(self, group: ModelGroup) -> None:
        self.runner = load_group(group)
        self.metrics = ModelMetrics("+".join(group.names))  # a shared backbone: all its models
        self.batcher: Batcher[Prepared, Any] = Batcher(
            self._features, group.batching.max_batch_size, group.batching.batch_wait_timeout_s
        )
        # ObjectRef id -> its features: an image's forward runs once, whichever models ask for it.
        self.recent: OrderedDict[str, asyncio.Future[Any]] = OrderedDict()
        self.computing: set[asyncio.Task[None]] = set()
        log.info("%s loaded on %s with %d torch threads", ", ".join(map(self.runner.version_of, self.runner.names)),
                 self.runner.info().device, torch.get_num_threads())

    def info(self, model: str | None = None) -> ModelInfo:
        return self.runner.info(model)

    def batch_stats(self) -> dict[str, float]:
        """Batches run by this replica so far and their mean size (how well batching fills)."""
        return self.batcher.stats()

    async def predict(self, image: DecodedImage, model: str | None = None) -> dict[str, Any]:
        """``model``'s answer (default: the runner's own) for one image; raises what it raised."""
        name = model or self.runner.spec.name
        features = await self.batcher.submit(await asyncio.to_thread(self.runner.prepare, image))
        return self._answer(features, [name])[name]

    async def predict_many(
        self, images: list[DecodedImage | ray.ObjectRef], models: list[list[str]]
    ) -> list[dict[str, dict[str, Any]]]:
        """For each image, each of its ``models``' answer: ``{"version", "result"}``, or
        ``{"error"}`` where that image failed (the others still get theirs). Images may be
        ``ObjectRef``s (one object-store copy shared by every model the image goes to); an
        image's features are computed once per replica, whichever request asks first."""
        pending = [self._recent(image) for image in images]
        fresh = [i for i, future in enumerate(pending) if future is None]
        if fresh:
            futures = self._remember([images[i] for i in fresh])
            for i, future in zip(fresh, futures, strict=True):
                pending[i] = future
        out = []
        for future, names in zip(pending, models, strict=True):
            try:
                features = await asyncio.shield(future)  # type: ignore[arg-type]
            except Exception as exc:
                out.append({name: {"error": describe(exc)} for name in names})
                continue
            out.append(self._answer(features, names))
        return out

    def _recent(self, image: DecodedImage | ray.ObjectRef) -> asyncio.Future[Any] | None:
        if not isinstance(image, ray.ObjectRef):
            return None
        future = self.recent.get(image.hex())
        if future is not None:
            self.recent.move_to_end(image.hex())
        return future

    def _remember(self, images: list[DecodedImage | ray.ObjectRef]) -> list[asyncio.Future[Any]]:
        """Futures of ``images``' features, computed by one task (so a cancelled request does not
        cancel them for the other requests waiting on them), kept for the images' other models."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures, strict=True):
            future.add_done_callback(_retrieved)
            if isinstance(image, ray.ObjectRef):
                self.recent[image.hex()] = future
        while len(self.recent) > RECENT_FEATURES:
            self.recent.popitem(last=False)
        task = loop.create_task(self._compute(images, futures))
        self.computing.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(self.computing.discard)
        return futures

    async def _compute(self, images: list[DecodedImage | ray.ObjectRef], futures: list[asyncio.Future[Any]]) -> None:
        try:
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
            for p, future in zip(prepared, futures, strict=True):
                answer = p if isinstance(p, Exception) else next(done)
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
        except BaseException as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(describe(exc)))
            raise

    def _prepare_all(self, images: list[DecodedImage]) -> list[Prepared | Exception]:
        out: list[Prepared | Exception] = []
        for image in images:
            try:
                out.append(self.runner.prepare(image))
            except Exception as exc:  # this image only
                out.append(exc)
        return out

    def _features(self, batch: list[Prepared]) -> list[Any]:
        with self.metrics.batch(len(batch)):
            return self.runner.features(batch)

    def _answer(self, features: Any, names: list[str]) -> dict[str, dict[str, Any]]:
        """Each model's answer from an image's features; a model failing fails only itself."""
        try:
            results = self.runner.answer(features, set(names))
        except Exception:
            results = {}
            for name in names:
                try:
                    results.update(self.runner.answer(features, [name]))
                except Exception as exc:
                    results[name] = exc
        return {
            name: {"error": describe(result)} if isinstance(result, Exception)
            else {"version": self.runner.version_of(name), "result": result}
            for name, result in ((name, results[name]) for name in names)
        }


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Marks a failed image's future as read: a future nobody awaited (its request was
    cancelled) would otherwise log "exception never retrieved" when it is dropped."""
    if not future.cancelled():
        future.exception()


def max_ongoing_requests(group: ModelGroup) -> int:
    """A replica must accept at least a full batch, twice, to fill the next while one runs,
    and at least the autoscaling target, or the target could never be reached."""
    batch = group.batching.max_batch_size
    return max(2 * batch, int(group.autoscaling.target_ongoing_requests + 0.999), 8)


def bind_group(group: ModelGroup) -> Application:
    """A bound deployment for ``group``: its own autoscaling on its own queue, its resources."""
    return ModelDeployment.options(
        name=group.deployment_name,
        max_ongoing_requests=max_ongoing_requests(group),
        autoscaling_config=group.autoscaling.model_dump(exclude_none=True),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        ray_actor_options={"num_cpus": group.resources.num_cpus, "num_gpus": group.resources.num_gpus},
    ).bind(group)


def bind_model(spec: ModelSpec) -> Application:
    """``spec`` alone in a deployment of its own (benchmarks of one model)."""
    return bind_group(ModelGroup((spec,)))


def bind_models(registry: Registry, gpu_policy: GpuPolicy) -> dict[str, Application]:
    """Every model's deployment by model name, each GPU ask fitted to the cluster
    (``core.placement``): models on one backbone share one deployment (``serving_groups``)."""
    specs = fit_to_cluster(list(registry.models.values()), gpu_policy, cluster_gpus())
    apps: dict[str, Application] = {}
    for group in serving_groups(specs):
        app = bind_group(group)  # one object under every name: Serve deploys it once
        apps.update(dict.fromkeys(group.names, app))
    return apps
