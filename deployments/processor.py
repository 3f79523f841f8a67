"""The job processor: takes image jobs from the Redis stream and fans them out to the models.

Each replica runs ``processor_concurrency`` workers reading the stream through one consumer
group, plus a reclaimer that takes over jobs a dead worker left pending past the visibility
timeout. Work is idempotent: models that already have a result are not run again, and
``finalize`` announces each state once, so processing a job twice is harmless.

A model call that fails because its replica died or is unavailable (Serve is replacing it) is
retried a bounded number of times: inference is pure, so a retry is safe, and the image does not
lose a model to a replica crash. Each model has its own deadline (registry ``timeout_s``).
A decoded image is put in the object store once and goes to every model by reference; calls to
one model are coalesced into multi-image requests under load (``deployments.model_client``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.remote_function import RemoteFunction
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from redis.exceptions import RedisError

from core.failures import Failure
from core.registry import ModelSpec, decode_min_side, load_registry
from core.schemas import ErrorCode, ErrorInfo, ImageStatus, ModelResult, ModelStatus, utcnow
from core.settings import Settings
from core.store import Job, Store
from deployments.images import DecodedImage, ImageFetcher, load_image
from deployments.model_client import ModelClient
from notifier import notifier_handle

log = logging.getLogger("sightwire.processor")

REDIS_RETRY_S = 1.0
# A model call that died with its replica is tried this many times in all, backing off between.
MODEL_ATTEMPTS = 4
MODEL_RETRY_BACKOFF_S = 0.25
RETRYABLE_MODEL_ERRORS = (RayActorError, BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError)


def model_specs(settings: Settings) -> dict[str, ModelSpec]:
    """The registry's models; none when the registry file is absent (tests that pass handles)."""
    try:
        return load_registry(settings.models, settings.models_dir).models
    except FileNotFoundError:
        return {}


def model_timeouts(settings: Settings, specs: dict[str, ModelSpec]) -> dict[str, float]:
    """Each registry model's deadline: its ``timeout_s``, else ``settings.model_timeout_s``."""
    return {name: spec.timeout_s or settings.model_timeout_s for name, spec in specs.items()}


def model_clients(specs: dict[str, ModelSpec], models: dict[str, DeploymentHandle]) -> dict[str, ModelClient]:
    """A coalescing client per model: requests of up to a batch, two in flight per replica."""
    clients = {}
    for name, handle in models.items():
        spec = specs.get(name)
        batch = spec.batching.max_batch_size if spec else 8
        replicas = spec.autoscaling.max_replicas if spec else 1
        clients[name] = ModelClient(handle, max_images=batch, max_in_flight=2 * replicas)
    return clients


class Processor:
    """The processing loop itself, independent of Serve so it can be run and tested directly."""

    def __init__(
        self,
        settings: Settings,
        models: dict[str, DeploymentHandle],
        notifier: Any,
        bulk: DeploymentHandle | None = None,
        timeouts: dict[str, float] | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.bulk = bulk
        self.specs = model_specs(settings)
        self.timeouts = model_timeouts(settings, self.specs) if timeouts is None else timeouts
        self.model_retries: Counter[str] = Counter()  # calls retried after a replica died, per model
        self.clients = model_clients(self.specs, models)
        self.notifier = notifier
        self.store = Store.from_settings(settings)
        self.fetcher = ImageFetcher.from_settings(settings)
        self.consumer = f"processor-{uuid.uuid4().hex[:12]}"
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._work(f"{self.consumer}-{i}"))
            for i in range(self.settings.processor_concurrency)
        ]
        self._tasks.append(loop.create_task(self._reclaim()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.fetcher.aclose()
        await self.store.close()

    async def _work(self, consumer: str) -> None:
        while True:
            try:
                for job in await self.store.jobs.read(consumer, count=1, block_ms=1000):
                    await self.process(job, consumer)
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable in %s: %s", consumer, exc)
                await asyncio.sleep(REDIS_RETRY_S)
            except Exception:  # the job stays pending and is reclaimed after the visibility timeout
                log.exception("worker %s failed a job", consumer)
                await asyncio.sleep(REDIS_RETRY_S)

    async def _reclaim(self) -> None:
        """Take up jobs whose worker died: idle longer than the visibility timeout."""
        idle_ms = int(self.settings.visibility_timeout_s * 1000)
        while True:
            await asyncio.sleep(max(self.settings.visibility_timeout_s / 4, 0.5))
            consumer = f"{self.consumer}-reclaim"
            try:
                for job in await self.store.jobs.claim_stale(consumer, idle_ms, count=16):
                    log.info("reclaimed job %s (image %s, group %s)", job.id, job.image_id, job.group_id)
                    await self.process(job, consumer)
            except (RedisError, OSError) as exc:
                log.warning("redis unavailable in reclaimer: %s", exc)

    async def process(self, job: Job, consumer: str) -> None:
        if job.group_id:
            await self._process_bulk(job, consumer)
        else:
            await self.process_image(job.image_id, job.models)
        await self.store.jobs.ack(job.id)

    async def process_image(self, image_id: str, models: list[str]) -> None:
        """Run the image's still-queued ``models`` and announce the result; idempotent."""
        record = await self.store.images.get(image_id)
        if record is None or record.status is ImageStatus.CANCELED:
            return
        queued = {name for name, m in record.models.items() if m.status is ModelStatus.QUEUED}
        pending = [name for name in models if name in queued]
        if pending and record.error is None:
            await self._run_models(image_id, record.url, pending)
        _, deliveries = await self.store.images.finalize(image_id)
        if deliveries:
            self.notifier.wake.remote()

    async def _process_bulk(self, job: Job, consumer: str) -> None:
        """A large group: hand it to the Ray Data pipeline, keeping the job claimed meanwhile."""
        if self.bulk is None:  # no pipeline deployed: work through the images here
            limit = asyncio.Semaphore(self.settings.processor_concurrency)

            async def one(image_id: str) -> None:
                async with limit:
                    await self.process_image(image_id, job.models)

            await asyncio.gather(*(one(image_id) for image_id in job.image_ids))
            return
        ref = self.bulk.remote(self.settings, job.group_id, list(job.image_ids), models=job.models)
        run = asyncio.wrap_future(ref.future())
        while not (await asyncio.wait({run}, timeout=max(self.settings.visibility_timeout_s / 3, 0.5)))[0]:
            await self.store.jobs.touch(job.id, consumer)
        run.result()

    async def _run_models(self, image_id: str, url: str, models: list[str]) -> None:
        try:
            min_side = decode_min_side(self.specs[name] for name in models if name in self.specs)
            image = await load_image(self.fetcher, url, self.settings, min_side)
        except Failure as failure:
            await self.store.images.write_image_error(image_id, failure.info())
            return
        await self.store.images.mark_started(image_id, image.width, image.height)
        shared = ray.put(image)  # one object-store copy, read by every model
        await asyncio.gather(*(self._run_model(image_id, name, shared) for name in models))

    async def _run_model(self, image_id: str, name: str, image: DecodedImage | ray.ObjectRef) -> None:
        """Run one model and write its result the moment it is ready; a failure stays local."""
        timeout_s = self.timeouts.get(name, self.settings.model_timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                answer = await self._call_model(name, image)
            result = ModelResult(
                status=ModelStatus.COMPLETE, version=answer["version"], result=answer["result"],
                completed_at=utcnow(),
            )
        except TimeoutError:
            result = self._failed(ErrorCode.MODEL_TIMEOUT, f"{name} took over {timeout_s:g}s")
        except Exception as exc:  # any model error fails this model only
            log.exception("model %s failed on %s", name, image_id)
            result = self._failed(ErrorCode.MODEL_FAILED, f"{name}: {type(exc).__name__}: {exc}"[:500])
        await self.store.images.write_model_result(image_id, name, result)

    async def _call_model(self, name: str, image: DecodedImage | ray.ObjectRef) -> dict[str, Any]:
        """One model call, retried while its replica is dead or unavailable (bounded).

        A replica killed mid-batch fails its in-flight requests with ``RayActorError``; Serve
        routes the retry to a live replica, or holds it until the replacement is up. Errors the
        model itself raises are not retried: they would fail again."""
        for attempt in range(1, MODEL_ATTEMPTS + 1):
            try:
                return await self.clients[name].predict(image)
            except RETRYABLE_MODEL_ERRORS as exc:
                if attempt == MODEL_ATTEMPTS:
                    raise
                self.model_retries[name] += 1
                log.warning("model %s call failed (%s), retry %d/%d", name, type(exc).__name__,
                            attempt, MODEL_ATTEMPTS - 1)
                await asyncio.sleep(MODEL_RETRY_BACKOFF_S * attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _failed(code: ErrorCode, message: str) -> ModelResult:
        error = ErrorInfo(code=code, message=message)
        return ModelResult(status=ModelStatus.FAILED, error=error, completed_at=utcnow())


@serve.deployment(ray_actor_options={"num_cpus": 0})
class JobProcessor:
    """Serve keeps the processing loop alive: a crashed replica is replaced, and its jobs are
    reclaimed after the visibility timeout."""

    def __init__(
        self, settings: Settings, models: dict[str, DeploymentHandle], bulk: RemoteFunction | None = None
    ) -> None:
        self.processor = Processor(settings, models, notifier_handle(), bulk)
        self.processor.start()

    async def depth(self) -> int:
        return await self.processor.store.jobs.depth()

    async def model_retries(self) -> dict[str, int]:
        """Model calls retried after a replica died, per model (since this replica started)."""
        return dict(self.processor.model_retries)

    async def __del__(self) -> None:
        await self.processor.stop()
