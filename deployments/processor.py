"""The job processor: takes image jobs from the Redis stream and fans them out to the models.

Each replica runs ``processor_concurrency`` workers reading the stream through one consumer
group, plus a reclaimer that takes over jobs a dead worker left pending past the visibility
timeout. Work is idempotent: models that already have a result are not run again, and
``finalize`` announces each state once, so processing a job twice is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from redis.exceptions import RedisError

from core.failures import Failure
from core.schemas import ErrorCode, ErrorInfo, ImageStatus, ModelResult, ModelStatus, utcnow
from core.settings import Settings
from core.store import Job, Store
from deployments.images import DecodedImage, ImageFetcher, load_image
from notifier import notifier_handle

log = logging.getLogger("sightwire.processor")

REDIS_RETRY_S = 1.0


class Processor:
    """The processing loop itself, independent of Serve so it can be run and tested directly."""

    def __init__(
        self,
        settings: Settings,
        models: dict[str, DeploymentHandle],
        notifier: Any,
        bulk: DeploymentHandle | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.bulk = bulk
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
        run = asyncio.ensure_future(self.bulk.run.remote(job.group_id, list(job.image_ids), job.models))
        while not (await asyncio.wait({run}, timeout=max(self.settings.visibility_timeout_s / 3, 0.5)))[0]:
            await self.store.jobs.touch(job.id, consumer)
        run.result()

    async def _run_models(self, image_id: str, url: str, models: list[str]) -> None:
        try:
            image = await load_image(self.fetcher, url, self.settings)
        except Failure as failure:
            await self.store.images.write_image_error(image_id, failure.info())
            return
        await self.store.images.mark_started(image_id, image.width, image.height)
        await asyncio.gather(*(self._run_model(image_id, name, image) for name in models))

    async def _run_model(self, image_id: str, name: str, image: DecodedImage) -> None:
        """Run one model and write its result the moment it is ready; a failure stays local."""
        try:
            async with asyncio.timeout(self.settings.model_timeout_s):
                answer = await self.models[name].predict.remote(image)
            result = ModelResult(
                status=ModelStatus.COMPLETE, version=answer["version"], result=answer["result"],
                completed_at=utcnow(),
            )
        except TimeoutError:
            result = self._failed(ErrorCode.MODEL_TIMEOUT, f"{name} took over {self.settings.model_timeout_s}s")
        except Exception as exc:  # any model error fails this model only
            log.exception("model %s failed on %s", name, image_id)
            result = self._failed(ErrorCode.MODEL_FAILED, f"{name}: {type(exc).__name__}: {exc}"[:500])
        await self.store.images.write_model_result(image_id, name, result)

    @staticmethod
    def _failed(code: ErrorCode, message: str) -> ModelResult:
        error = ErrorInfo(code=code, message=message)
        return ModelResult(status=ModelStatus.FAILED, error=error, completed_at=utcnow())


@serve.deployment(ray_actor_options={"num_cpus": 0})
class JobProcessor:
    """Serve keeps the processing loop alive: a crashed replica is replaced, and its jobs are
    reclaimed after the visibility timeout."""

    def __init__(
        self, settings: Settings, models: dict[str, DeploymentHandle], bulk: DeploymentHandle | None = None
    ) -> None:
        self.processor = Processor(settings, models, notifier_handle(settings), bulk)
        self.processor.start()

    async def depth(self) -> int:
        return await self.processor.store.jobs.depth()

    async def __del__(self) -> None:
        await self.processor.stop()
