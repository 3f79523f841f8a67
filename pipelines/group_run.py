"""A large group's images run through the bulk pipeline, with every result written to the store.

``process_group`` is what a bulk job does (groups of at least ``Settings.bulk_threshold``
images): it reads each image's record, skips the images already finished (so a restarted run
picks up where the last one stopped), streams the rest through the Ray Data pipeline, and
writes each image's results the moment its batch comes out — every model's result and the
started mark in one ``write_results`` (or ``write_image_error`` when the image could not be
fetched or decoded), then ``finalize``, which moves the group's counts and aggregates and puts any
webhook in the outbox (whose wake token the notifier waits on: nothing here calls it).

Writes are idempotent and ``finalize`` announces each state once, so running a group twice (a
retried task, a reclaimed job) is harmless. A canceled group's run is cancelled by the processor
that launched it (a forced ``ray.cancel``: the Ray Data actors it owns exit with it); what was written is
kept, and a write that races the cancel is dropped by the store (the image is final).
Launch it off the caller's event loop as a Ray task:
``process_group_remote.remote(settings, group_id, image_ids)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

import pyarrow as pa
import ray

from core.failures import failed_result
from core.registry import load_registry
from core.schemas import ErrorCode, ErrorInfo, ImageRecord, ModelResult, ModelStatus
from core.settings import Settings
from core.store import Store
from pipelines.columns import ERROR_CODE, ERROR_MESSAGE, HEIGHT, ID, URL, WANTED, WIDTH
from pipelines.dataset import PipelineOptions, build_pipeline

log = logging.getLogger("sightwire.group_run")

READ_CHUNK = 500  # image records read per Redis round trip
WRITE_CONCURRENCY = 16  # images of one batch written at once


def pending_models(record: ImageRecord, models: Iterable[str] | None) -> list[str]:
    """The models still queued on an image (among ``models``, when given)."""
    allowed = None if models is None else set(models)
    return [
        name for name, result in record.models.items()
        if result.status is ModelStatus.QUEUED and (allowed is None or name in allowed)
    ]


async def _plan(
    store: Store, image_ids: Sequence[str], models: Iterable[str] | None
) -> tuple[dict[str, tuple[str, list[str]]], list[str]]:
    """``{image id: (url, models to run)}`` for the unfinished images, and the finished ones."""
    todo: dict[str, tuple[str, list[str]]] = {}
    finished: list[str] = []
    for start in range(0, len(image_ids), READ_CHUNK):
        for record in await store.images.get_many(list(image_ids[start:start + READ_CHUNK])):
            if record.status.is_terminal:
                finished.append(record.id)
                continue
            wanted = pending_models(record, models)
            if wanted and record.error is None:
                todo[record.id] = (record.url, wanted)
    return todo, finished


async def _gather_bounded(items: Iterable[Any], work: Any) -> list[Any]:
    limit = asyncio.Semaphore(WRITE_CONCURRENCY)

    async def one(item: Any) -> Any:
        async with limit:
            return await work(item)

    return await asyncio.gather(*(one(item) for item in items))


async def _finalize_all(store: Store, group_id: str, image_ids: Iterable[str]) -> None:
    """Announce finished images whose last run stopped between their writes and ``finalize``
    (``finalize`` adds nothing for a state already announced)."""
    await _gather_bounded(image_ids, lambda i: _guarded(group_id, i, store.images.finalize(i)))


def _model_result(name: str, value: str | None, available: set[str]) -> ModelResult:
    if value:
        return ModelResult.model_validate_json(value)
    reason = "is not in this deployment's registry" if name not in available else "returned no result"
    return failed_result(ErrorCode.MODEL_FAILED, f"{name} {reason}")


async def _guarded(group_id: str, image_id: str, write: Awaitable[object]) -> None:
    """One image's write; a failure is logged with the image and the run goes on (the image
    stays unfinished, so a rerun of the group picks it up again)."""
    try:
        await write
    except Exception:
        log.exception("group %s: writing image %s failed; the run goes on", group_id, image_id)


async def _write_row(store: Store, group_id: str, row: dict[str, Any], wanted: list[str], available: set[str]) -> None:
    await _guarded(group_id, row[ID], _write_outcome(store, row, wanted, available))


async def _write_outcome(store: Store, row: dict[str, Any], wanted: list[str], available: set[str]) -> None:
    image_id = row[ID]
    if row[ERROR_CODE]:
        error = ErrorInfo(code=ErrorCode(row[ERROR_CODE]), message=row[ERROR_MESSAGE] or "")
        await store.images.write_image_error(image_id, error)
    else:
        size = (row[WIDTH], row[HEIGHT]) if row.get(WIDTH) is not None else None  # None: no model could run
        results = {name: _model_result(name, row.get(name), available) for name in wanted}
        await store.images.write_results(image_id, results, size)
    await store.images.finalize(image_id)


async def _write_batch(
    store: Store, group_id: str, table: pa.Table, todo: dict[str, tuple[str, list[str]]], available: set[str]
) -> None:
    rows = table.to_pylist()
    await _gather_bounded(rows, lambda row: _write_row(store, group_id, row, todo[row[ID]][1], available))


def process_group(
    settings: Settings,
    group_id: str,
    image_ids: list[str],
    *,
    models: Sequence[str] | None = None,
    options: PipelineOptions | None = None,
) -> int:
    """Run the unfinished images of a group through the bulk pipeline; returns how many ran.

    ``models`` limits the run to those models (default: every model still queued on each
    image). Needs a connected Ray (it runs as a Ray task, or in a driver)."""
    registry = load_registry(settings.models, settings.models_dir)
    with asyncio.Runner() as runner:
        store = Store.from_settings(settings)
        try:
            todo, finished = runner.run(_plan(store, image_ids, models))
            # Finished images of an earlier, interrupted run may still be unannounced.
            runner.run(_finalize_all(store, group_id, finished))
            log.info("group %s: %d images to run, %d already finished", group_id, len(todo), len(finished))
            if not todo:
                return 0
            needed = list(dict.fromkeys(name for _, wanted in todo.values() for name in wanted))
            specs = [registry[name] for name in needed if name in registry]
            available = {spec.name for spec in specs}
            processed = 0
            for table in _stream(todo, specs, settings, options):
                runner.run(_write_batch(store, group_id, table, todo, available))
                processed += table.num_rows
            return processed
        finally:
            runner.run(store.close())


def _stream(
    todo: dict[str, tuple[str, list[str]]],
    specs: list[Any],
    settings: Settings,
    options: PipelineOptions | None,
) -> Iterable[pa.Table]:
    """Result batches for ``todo``; without any runnable model, rows with nothing run."""
    rows = {
        ID: list(todo),
        URL: [url for url, _ in todo.values()],
        WANTED: [json.dumps(wanted) for _, wanted in todo.values()],
    }
    table = pa.table(rows)
    if not specs:  # every wanted model is unknown here: each fails on its own, nothing to fetch
        empty = pa.array([None] * table.num_rows, pa.string())
        yield table.append_column(ERROR_CODE, empty).append_column(ERROR_MESSAGE, empty)
        return
    pipeline = build_pipeline(table, specs, settings, options)
    pipeline.context.enable_progress_bars = False
    yield from pipeline.iter_batches(batch_size=None, batch_format="pyarrow")


# The processor launches a group run as a task that takes no CPU of its own (the pipeline's
# stages hold the resources); a run that dies with its worker is retried and resumes.
process_group_remote = ray.remote(num_cpus=0, max_retries=2)(process_group)
