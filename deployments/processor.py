"""The job processor: the online engine (docs/engine.md) on Serve.

Each replica claims jobs from the store's fair queues (``core.store.jobs``) through two
``deployments.engine.intake.Intake``\\ s: the online one holds up to ``engine_max_in_flight`` image
jobs (``engine_org_max_in_flight`` of one org), the bulk one up to ``max_bulk_runs`` group runs,
so a Ray Data run never holds an online slot. Every claim is a lease the intake's heartbeat
renews and the reclaimer returns when its replica dies; a job past ``max_job_attempts`` fails
its image(s) with ``attempts_exhausted``, is announced through ``finalize`` and is buried in the
dead letters. One task per job walks the stages, each bounded and fair by org
(``deployments.engine.limits``): fetch (slots per org and per destination host), body bytes,
decode (a thread pool), decoded pixels, and images in flight per model (enough to fill every
replica's batches). Nothing of a backlog sits here beyond what the intake claimed.

Work is idempotent: models that already have a result are not run again, and ``finalize``
announces each state once, so a job run twice (a lease that expired) is harmless. ``finalize``
pushes the outbox's wake token, which the notifier waits on.

A model call that fails because its replica died or is unavailable is retried a bounded number
of times (inference is pure). Each model has its own deadline (registry ``timeout_s``). A decoded
image is put in the object store once and goes to every model by reference; calls to one model
are coalesced into multi-image requests (``deployments.model_client``). Queue depths, jobs in
flight, fetch errors, decode and model times go to Prometheus (``core.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import ray
from ray import serve
from ray.exceptions import RayActorError, TaskCancelledError, WorkerCrashedError
from ray.remote_function import RemoteFunction
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from core.coalesce import Coalescer
from core.failures import Failure, describe, failed_result
from core.metrics import REFRESH_S, EngineMetrics
from core.registry import ModelSpec, decode_min_side, load_registry
from core.schemas import ErrorCode, ErrorInfo, ImageRecord, ModelResult, ModelStatus, utcnow
from core.settings import Settings
from core.store import Job, Store
from core.store.deadlines import DEADLINE_ERROR
from core.store.fair_queue import QueuedJob
from core.store.groups import chunks
from core.store.jobs import QueueName
from core.store.records import Written
from core.supervise import stop_steps, supervise
from deployments.engine.intake import EXPECTED, Intake, IntakeLimits
from deployments.engine.limits import OrgWeights, StageLimits, decode_threads, org_cap_governor
from deployments.engine.scaling import BACKLOG, HELD
from deployments.model_client import model_clients
from imaging import DecodedImage, ImageFetcher, decode_image, decode_pixels

log = logging.getLogger("sightwire.processor")

# A model call that died with its replica is tried this many times in all, backing off between.
MODEL_ATTEMPTS = 4
MODEL_RETRY_BACKOFF_S = 0.25
RETRYABLE_MODEL_ERRORS = (RayActorError, BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError)
FINALIZE_CHUNK = 50  # finalizes in flight at once after a bulk run is killed
DEADLINE_SWEEP_S = 0.25  # how late past its deadline a queued image may be canceled and announced
BULK_CANCEL_POLL_S = 0.5  # how often a bulk run's group is checked for a cancel


def model_specs(settings: Settings) -> dict[str, ModelSpec]:
    """The registry's models; none when the registry file is absent (tests that pass handles)."""
    try:
        return load_registry(settings.models, settings.models_dir).models
    except FileNotFoundError:
        return {}


def model_timeouts(settings: Settings, specs: dict[str, ModelSpec]) -> dict[str, float]:
    """Each registry model's deadline: its ``timeout_s``, else ``settings.model_timeout_s``."""
    return {name: spec.timeout_s or settings.model_timeout_s for name, spec in specs.items()}


def runnable(record: ImageRecord | None) -> bool:
    """The seam of cancel and deadlines (issue 12): work starts, and each model call is made,
    only on an image that still exists and is not terminal (finished, failed or canceled)."""
    return record is not None and not record.status.is_terminal


def expired(record: ImageRecord) -> bool:
    """Whether the image's deadline has passed (the work left is canceled, not started)."""
    return record.deadline is not None and record.deadline <= utcnow()


class ImageRun:
    """One online job's view of its image, so the engine reads the record once per job, not
    once per model call: the record as read when the job started, and whether the image is
    still live as the job's own writes last said (each write reports whether it was dropped
    because the image was canceled or is gone). A model that had to wait for its slot reads it
    again (``refresh``): a cancel made meanwhile stops it before its call. Results of models
    that finish together (the heads of one backbone) go to Redis in one write.

    The view also keeps the record's hash (``fields``) current through the job's own writes,
    for as long as each lands one sequence step past the last (else another writer came in
    between and the view is dropped). While it is current, the job's last result is not written
    on its own: ``finalize`` writes it with the announcement, without reading the image again.
    A job stopped between that model's answer and its finalize loses the result, and the job's
    retry runs the model again (work is at least once; nothing announced is lost)."""

    def __init__(self, record: ImageRecord, fields: dict[str, str], store: Store, models: int) -> None:
        self.record = record
        self.fields: dict[str, str] | None = dict(fields)
        self.live = True
        self.last: dict[str, ModelResult] = {}  # the job's last results, held for finalize
        self._left = models
        self._store = store
        self._writer: Coalescer[tuple[str, ModelResult], bool] = Coalescer(self._write_many, max_in_flight=1)

    async def refresh(self) -> None:
        found = await self._store.images.read(self.record.id)
        if found is None:
            self.live, self.fields = False, None
        else:
            self.record, self.fields = found

    def track(self, written: Written | None) -> bool:
        """Take in one of the job's writes; returns whether it was applied."""
        if written is None:
            self.live, self.fields = False, None
            return False
        if self.fields is not None and written.seq == int(self.fields["seq"]) + 1:
            self.fields.update(written.fields)
        else:
            self.fields = None
        return True

    async def write(self, model: str, result: ModelResult) -> None:
        self._left -= 1
        if self._left == 0 and self.fields is not None and self.live:
            self.last[model] = result
            return
        self.live = await self._writer.submit((model, result)) and self.live

    async def _write_many(self, results: list[tuple[str, ModelResult]]) -> list[bool]:
        written = self.track(await self._store.images.write_results(self.record.id, dict(results)))
        return [written] * len(results)


class Processor:
    """The engine of one replica, independent of Serve so it can be run and tested directly."""

    def __init__(
        self,
        settings: Settings,
        models: dict[str, DeploymentHandle],
        bulk: RemoteFunction | None = None,
        timeouts: dict[str, float] | None = None,
    ) -> None:
        self.settings = settings
        self.models = models
        self.bulk = bulk
        self.specs = model_specs(settings)
        self.timeouts = model_timeouts(settings, self.specs) if timeouts is None else timeouts
        self.model_retries: Counter[str] = Counter()  # calls retried after a replica died, per model
        self.clients = model_clients(self.specs, models)
        self.store = Store.from_settings(settings)
        self.metrics = EngineMetrics()
        self._loops: list[asyncio.Task[None]] = []
        self.fetcher = ImageFetcher.from_settings(settings)
        self.weights = OrgWeights()
        self.limits = StageLimits.build(settings, {n: s for n, s in self.specs.items() if n in models},
                                        weight=self.weights)
        self._decoders = ThreadPoolExecutor(decode_threads(settings), thread_name_prefix="sightwire-decode")
        jobs = self.store.jobs
        online = IntakeLimits(settings.engine_max_in_flight, settings.engine_org_max_in_flight,
                              settings.job_reclaim_interval_s, retry_delay_s=settings.job_retry_delay_s)
        bulk_runs = IntakeLimits(settings.max_bulk_runs, settings.max_bulk_runs, settings.job_reclaim_interval_s,
                                 retry_delay_s=settings.job_retry_delay_s)
        def weights() -> dict[str, float]:
            return self.weights.current

        self.intakes = {
            QueueName.ONLINE: Intake("processor", jobs.online, jobs.dead[QueueName.ONLINE], online,
                                     run=self._run_online, exhausted=self._exhausted, logger=log, weights=weights,
                                     governor=org_cap_governor(settings, self.specs.values())),
            QueueName.BULK: Intake("bulk", jobs.bulk, jobs.dead[QueueName.BULK], bulk_runs,
                                   run=self._run_bulk, exhausted=self._exhausted, logger=log, weights=weights),
        }

    def start(self) -> None:
        for intake in self.intakes.values():
            intake.start()
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(supervise("processor metrics", self._report, expected=EXPECTED, logger=log),
                             name="processor-metrics"),
            loop.create_task(supervise("processor deadlines", self._sweep_deadlines, expected=EXPECTED, logger=log),
                             name="processor-deadlines"),
        ]

    async def stop(self) -> None:
        """Stop claiming and give back what is held (another replica takes it at once)."""
        for loop in self._loops:
            loop.cancel()
        await stop_steps("processor", [asyncio.gather(
            *(intake.stop() for intake in self.intakes.values()), *self._loops, return_exceptions=True)])
        self._decoders.shutdown(wait=False, cancel_futures=True)
        await stop_steps("processor", (self.fetcher.aclose(), self.store.close()))

    # -- jobs ----------------------------------------------------------------------------------

    async def _report(self) -> None:
        """The gauges, and the org weights the claims and stage limiters share by (so a weight an
        operator sets reaches every claim and stage within ``REFRESH_S``, without a restart)."""
        await self.weights.refresh(self.store.weights)
        await self.metrics.refresh(self.store.jobs, {name: len(i.held) for name, i in self.intakes.items()},
                                   {name: i.org_cap for name, i in self.intakes.items()})
        await asyncio.sleep(REFRESH_S)

    async def _sweep_deadlines(self) -> None:
        """Cancel what passed its deadline, queued or not (every replica sweeps; expiring is
        idempotent), so a deadline is announced on time even when nothing is processing."""
        await self.store.deadlines.sweep(time.time())
        await asyncio.sleep(DEADLINE_SWEEP_S)

    async def _admit(self, record: ImageRecord | None) -> bool:
        """``runnable``, and the engine's side of deadlines: an image past its deadline is
        canceled (code ``deadline``) instead of being worked on."""
        if not runnable(record):
            return False
        if expired(record):  # type: ignore[arg-type]
            await self.store.images.cancel(record.id, error=DEADLINE_ERROR)  # type: ignore[union-attr]
            return False
        return True

    async def _run_online(self, queued: QueuedJob) -> None:
        self.metrics.claimed(QueueName.ONLINE, queued.org)
        job = Job.from_payload(queued.payload)
        await self.process_image(queued.org, job.image_id, job.models)

    async def _run_bulk(self, queued: QueuedJob) -> None:
        """A large group: hand it to the Ray Data pipeline; the intake's heartbeat renews the
        lease while the run lives. With no pipeline deployed the images run here, one job's
        worth of the online stages each.

        A canceled group's run is cancelled (``ray.cancel``, forced: its worker exits and the
        Ray Data actors it owns go with it), so it stops whenever the cancel comes, even before
        its first batch; every write it made is atomic and a canceled image takes no more."""
        self.metrics.claimed(QueueName.BULK, queued.org)
        job = Job.from_payload(queued.payload)
        if self.bulk is None:
            await asyncio.gather(*(self.process_image(queued.org, image_id, job.models) for image_id in job.image_ids))
            return
        ref = self.bulk.remote(self.settings, job.group_id, list(job.image_ids), models=job.models)
        run = asyncio.wrap_future(ref.future())
        while not (await asyncio.wait({run}, timeout=BULK_CANCEL_POLL_S))[0]:
            if await self.store.groups.canceled(job.group_id):
                log.info("group %s canceled: cancelling its bulk run", job.group_id,
                         extra={"org": queued.org, "group_id": job.group_id})
                # force: the run's worker exits, and with it the Ray Data actors it owns (a
                # KeyboardInterrupt alone can leave the streaming executor's thread fetching).
                ray.cancel(ref, force=True)
                with contextlib.suppress(TaskCancelledError, WorkerCrashedError):
                    await run
                await self._finalize_all(job.image_ids)
                return
        run.result()

    async def _finalize_all(self, image_ids: tuple[str, ...]) -> None:
        """Finalize every image of a killed bulk run: one whose results it wrote but whose
        finalize it never reached is announced and counted (``finalize`` is idempotent, a
        canceled image is already both), or its group would stay ``processing`` for good."""
        for chunk in chunks(image_ids, FINALIZE_CHUNK):
            await asyncio.gather(*(self.store.images.finalize(image_id) for image_id in chunk))

    async def _exhausted(self, queued: QueuedJob) -> None:
        """A job that used up its attempts: each of its images not yet terminal fails with its own
        code and is announced; the intake then buries the job. An image whose record cannot be
        read or announced is logged and left as it is; the dead letter keeps the job for an
        operator either way."""
        job = Job.from_payload(queued.payload)
        error = ErrorInfo(code=ErrorCode.ATTEMPTS_EXHAUSTED,
                          message=f"processing failed {queued.attempts} times; the job is a dead letter")
        for image_id in job.images:
            try:
                if not runnable(await self.store.images.get(image_id)):
                    continue
                await self.store.images.write_image_error(image_id, error)
                await self.store.images.finalize(image_id)
            except Exception:  # a record that cannot even be read: the job is buried all the same
                log.exception("could not fail and announce image %s (job %s)", image_id, queued.id)

    async def process_image(self, org: str, image_id: str, models: list[str]) -> None:
        """Run the image's still-queued ``models`` and announce the result; idempotent."""
        found = await self.store.images.read(image_id)
        if found is None:
            return
        record, fields = found
        run: ImageRun | None = None
        if await self._admit(record) and record.error is None:
            queued = {name for name, m in record.models.items() if m.status is ModelStatus.QUEUED}
            pending = [name for name in models if name in queued]
            if pending:
                run = ImageRun(record, fields, self.store, len(pending))
                await self._run_models(org, run, pending)
        if run is None:
            await self.store.images.finalize(image_id)
        else:  # what the job's writes left, and its last results, go with the announcement
            await self.store.images.finalize(image_id, run.fields, run.last)

    # -- stages --------------------------------------------------------------------------------

    async def _load(self, org: str, url: str, min_side: int) -> tuple[DecodedImage, Any]:
        """Fetch and decode under the fair stage bounds; returns the image and its pixel grant,
        which the caller releases once every model has the image."""
        limits, settings = self.limits, self.settings
        async with limits.fetch.hold(org, key=urlsplit(url).hostname or ""):
            data = await self.fetcher.fetch(url)
        async with limits.bodies.hold(org, len(data)):
            # The decode's full raster, read from the header: its peak memory, and more than what
            # the models then hold, so one grant covers decode and hand-off (0: refused unread).
            raster = decode_pixels(data, settings.max_image_side, min_side)
            pixels = await limits.pixels.acquire(org, max(1, min(raster, settings.max_image_pixels)))
            try:
                async with limits.decode.hold(org):
                    with self.metrics.decoding():
                        image = await asyncio.get_running_loop().run_in_executor(
                            self._decoders, decode_image, data, settings.max_image_pixels, settings.max_image_side,
                            min_side,
                        )
            except BaseException:
                pixels.release()
                raise
        return image, pixels

    async def _run_models(self, org: str, run: ImageRun, models: list[str]) -> None:
        record = run.record
        min_side = decode_min_side(self.specs[name] for name in models if name in self.specs)
        try:
            image, pixels = await self._load(org, record.url, min_side)
        except Failure as failure:
            self.metrics.fetch_error(failure.code)
            log.info("image %s failed: %s", record.id, failure.code.value,
                     extra={"org": org, "image_id": record.id, "code": failure.code.value})
            run.track(await self.store.images.write_image_error(record.id, failure.info()))
            return
        try:
            if not run.track(await self.store.images.mark_started(record.id, image.width, image.height)):
                return  # canceled (or gone) while it loaded: no model is called
            shared = ray.put(image)  # one object-store copy, read by every model
            await asyncio.gather(*(self._run_model(org, run, name, shared) for name in models))
        finally:
            pixels.release()

    async def _run_model(self, org: str, run: ImageRun, name: str, image: DecodedImage | ray.ObjectRef) -> None:
        """Run one model and write its result the moment it is ready; a failure stays local."""
        limiter = self.limits.models.get(name)
        waits = limiter is not None and (limiter.free <= 0 or limiter.waiters() > 0)
        async with limiter.hold(org) if limiter else contextlib.nullcontext():
            if waits:  # what the job last read may be stale by the wait for the slot
                await run.refresh()
            if not await self._may_call(run, name):
                return
            timeout_s = self.timeouts.get(name, self.settings.model_timeout_s)
            try:
                with self.metrics.model_call(name):
                    async with asyncio.timeout(timeout_s):
                        answer = await self._call_model(name, image)
                result = ModelResult(
                    status=ModelStatus.COMPLETE, version=answer["version"], result=answer["result"],
                    completed_at=utcnow(),
                )
            except TimeoutError:
                result = failed_result(ErrorCode.MODEL_TIMEOUT, f"{name} took over {timeout_s:g}s")
            except Exception as exc:  # any model error fails this model only
                log.exception("model %s failed on %s", name, run.record.id,
                              extra={"org": org, "image_id": run.record.id})
                result = failed_result(ErrorCode.MODEL_FAILED, f"{name}: {describe(exc)}")
        await run.write(name, result)

    async def _may_call(self, run: ImageRun, name: str) -> bool:
        """The check before a model call, on what the job knows of its image (no read): still
        live by its last write, ``_admit`` (a passed deadline cancels it here, once), and the
        model still queued."""
        if run.live and not await self._admit(run.record):
            run.live = False
        return run.live and run.record.models[name].status is ModelStatus.QUEUED

    async def _call_model(self, name: str, image: DecodedImage | ray.ObjectRef) -> dict[str, Any]:
        """One model call, retried while its replica is dead or unavailable (bounded).

        A replica killed mid-batch fails its in-flight requests with ``RayActorError``; Serve
        routes the retry to a live replica, or holds it until the replacement is up. Errors the
        model itself raises are not retried: they would fail again."""
        for attempt in range(1, MODEL_ATTEMPTS + 1):
            try:
                return await self.clients[name].predict(image, name)
            except RETRYABLE_MODEL_ERRORS as exc:
                if attempt == MODEL_ATTEMPTS:
                    raise
                self.model_retries[name] += 1
                log.warning("model %s call failed (%s), retry %d/%d", name, type(exc).__name__,
                            attempt, MODEL_ATTEMPTS - 1)
                await asyncio.sleep(MODEL_RETRY_BACKOFF_S * attempt)
        raise AssertionError("unreachable")

    # -- what the replica reports --------------------------------------------------------------

    def held(self) -> int:
        """Online jobs this replica holds (bulk runs work on Ray Data, not on this replica)."""
        return len(self.intakes[QueueName.ONLINE].held)

    def backlog(self) -> int:
        """Online jobs queued, as this replica's reclaimer last saw them."""
        return self.intakes[QueueName.ONLINE].backlog


@serve.deployment(ray_actor_options={"num_cpus": 0})
class JobProcessor:
    """Serve keeps the engine alive: a crashed replica is replaced, and its leases expire and
    are reclaimed by any live replica within ``job_lease_s`` + ``job_reclaim_interval_s``.
    Replicas autoscale on the backlog they report (``deployments.engine.scaling``)."""

    def __init__(
        self, settings: Settings, models: dict[str, DeploymentHandle], bulk: RemoteFunction | None = None
    ) -> None:
        self.processor = Processor(settings, models, bulk)
        self.processor.start()

    async def depth(self) -> int:
        return await self.processor.store.jobs.depth()

    async def model_retries(self) -> dict[str, int]:
        """Model calls retried after a replica died, per model (since this replica started)."""
        return dict(self.processor.model_retries)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom-metrics hook: what ``BacklogPolicy`` scales on."""
        return {BACKLOG: float(self.processor.backlog()), HELD: float(self.processor.held())}

    async def __del__(self) -> None:
        await self.processor.stop()
