"""The streaming bulk pipeline on Ray Data: fetch → decode → batched inference per model → rows.

    source rows (url, id, your columns)
      │  map_batches(LoadStage)             loader actors: async SSRF-safe fetch, decode in threads
      ▼
    rows + pixels (or an error code)
      │  map_batches(ModelStage) per group  actor pool per serving group (a model, or the models
      ▼                                     of one CLIP backbone: one forward per image), sized
                                            from the registry; the last one also finishes the rows:
    url, id, status, width, height, error_code, error_message, <model>...

Every stage works on one batch at a time and Ray Data streams batches through all stages with
backpressure, so memory stays flat however many images there are: no stage materialises the
dataset, and decoded pixels live only between the loader and the last model. A failed image is
a row with an error code (``url_forbidden``, ``http_error``, ``not_an_image``, ...), never an
exception: the pipeline goes on. A model failing on a batch is retried image by image so a
single bad image fails only itself (``model_failed``).

Model results are JSON strings of ``core.schemas.ModelResult`` (``{"status", "version",
"result" | "error", "completedAt"}``): the same shape the API stores, and a column type that
stays stable whatever the model returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy, Dataset
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from core.failures import MAX_MESSAGE_CHARS, Failure, describe, failed_result
from core.placement import cluster_gpus, fit_to_cluster
from core.registry import ModelGroup, ModelSpec, decode_min_side, serving_groups
from core.schemas import ErrorCode, ErrorInfo, ModelResult, ModelStatus, image_status, utcnow
from core.settings import Settings
from imaging import DecodedImage, ImageFetcher, decode_image
from pipelines.columns import (
    ERROR_CODE,
    ERROR_MESSAGE,
    HEIGHT,
    INTERNAL,
    NODE_PREFIX,
    OK,
    PIXEL_HEIGHT,
    PIXEL_WIDTH,
    PIXELS,
    STATUS,
    URL,
    WANTED,
    WIDTH,
    reserved_in,
    state_column,
)
from pipelines.sources import blocks


@dataclass(frozen=True)
class PipelineOptions:
    """Knobs of the pipeline; the defaults suit one machine and scale out on a cluster.

    ``loaders`` is the number of fetch/decode actors, on the driver's node while it has room
    (``None``: what the cluster's CPUs allow after the model actors, ``loader_cpus`` each); each
    fetches ``fetch_concurrency`` URLs of its batch at once and decodes them on ``decode_threads``
    threads. ``trace_nodes`` adds a ``node:<model>`` column: the Ray node that ran the model on
    each row."""

    fetch_batch_size: int = 32
    fetch_concurrency: int = 8
    decode_threads: int = 2
    loader_cpus: float = 0.5
    loaders: int | None = None
    trace_nodes: bool = False
    # > 0: each model's pool waits (up to this long) for its minimum actors before any batch is
    # dispatched, so work spreads over all of them from the first batch (default: start at once).
    wait_for_min_actors_s: float = -1


# --- fetch and decode ---------------------------------------------------------------------------


async def _load_all(
    fetcher: ImageFetcher,
    settings: Settings,
    urls: list[Any],
    options: PipelineOptions,
    min_side: int,
    pool: ThreadPoolExecutor,
) -> list[Any]:
    """Fetch (async, bounded) and decode (threads) every URL with the API processor's
    ``decode_image`` and the models' ``min_side``; a failure is returned, not raised."""
    limit = asyncio.Semaphore(options.fetch_concurrency)
    loop = asyncio.get_running_loop()

    async def one(url: Any) -> Any:
        if not isinstance(url, str) or not url:
            return Failure(ErrorCode.FETCH_FAILED, f"no image URL in this row ({url!r})")
        try:
            async with limit:
                data = await fetcher.fetch(url)
            return await loop.run_in_executor(
                pool, decode_image, data, settings.max_image_pixels, settings.max_image_side, min_side
            )
        except Failure as failure:
            return failure
        except Exception as exc:  # whatever else goes wrong fails this image only
            return Failure(ErrorCode.FETCH_FAILED, describe(exc))

    return await asyncio.gather(*(one(url) for url in urls))


def pixel_column(images: list[np.ndarray], ok: list[bool]) -> pa.Array:
    """Decoded pixels as one binary column, each image copied once into a single buffer (an
    empty value where ``ok`` is false). Pixel data is most of what a pipeline moves, and a copy
    of a decoded photo costs about as much as a fraction of its inference on a small CPU."""
    remaining = iter(images)
    offsets = np.zeros(len(ok) + 1, dtype=np.int64)
    np.cumsum([next(remaining).nbytes if good else 0 for good in ok], out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    position = 0
    for image in images:
        data[position:position + image.nbytes] = image.reshape(-1)
        position += image.nbytes
    return pa.Array.from_buffers(pa.large_binary(), len(ok), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def pixel_views(column: pa.ChunkedArray | pa.Array, heights: list[int], widths: list[int]) -> list[np.ndarray | None]:
    """Read-only HxWx3 views of a pixel column, without copying (``None`` for empty values)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    views: list[np.ndarray | None] = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        chunk = chunk.cast(pa.large_binary()) if chunk.type != pa.large_binary() else chunk
        _, offsets_buffer, data = chunk.buffers()
        offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[chunk.offset:chunk.offset + len(chunk) + 1]
        for start, end in itertools.pairwise(offsets):
            row = len(views)
            if end == start:
                views.append(None)
            elif end - start != heights[row] * widths[row] * 3:
                raise ValueError(f"row {row}: {end - start} pixel bytes for {widths[row]}x{heights[row]} RGB")
            else:
                image = np.frombuffer(data, dtype=np.uint8, count=int(end - start), offset=int(start))
                image.flags.writeable = False  # shared with the batch (and the object store)
                views.append(image.reshape(heights[row], widths[row], 3))
    return views


class LoadStage:
    """Ray Data callable class: append pixels (or an error) to each row of a batch.

    A pool of long-lived actors, not tasks: each keeps its event loop, its ``ImageFetcher`` (the
    TLS context costs ~50 ms to build; the pool keeps connections alive from batch to batch) and
    its decode threads. As tasks, Ray killed and restarted idle loader workers during a run, and
    each restart cost a second or more of CPU. Images decode by the API processor's rule, with at
    least ``min_side`` on the shortest side (``core.registry.decode_min_side`` of all the
    pipeline's models, so a row that runs fewer of them may decode larger than the API would)."""

    def __init__(self, settings: Settings, options: PipelineOptions, min_side: int) -> None:
        self.settings = settings
        self.options = options
        self.min_side = min_side
        self.fetcher = ImageFetcher.from_settings(settings)
        self.pool = ThreadPoolExecutor(options.decode_threads, thread_name_prefix="sightwire-decode")
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="sightwire-loader", daemon=True).start()

    def __del__(self) -> None:
        """Ray Data deletes the UDF when the pool shuts down: close connections, stop the loop."""
        if not hasattr(self, "loop"):  # __init__ failed before the loop existed
            return
        if self.loop.is_running():
            closing = asyncio.run_coroutine_threadsafe(self.fetcher.aclose(), self.loop)
            with contextlib.suppress(Exception):
                closing.result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.pool.shutdown(wait=False)

    def __call__(self, batch: pa.Table) -> pa.Table:
        clash = reserved_in(batch.column_names)
        if clash:
            raise ValueError(f"source columns {clash} are reserved for the pipeline's output; rename them")
        if URL not in batch.column_names:
            raise ValueError(f"the source has no {URL!r} column (columns: {batch.column_names})")
        work = _load_all(self.fetcher, self.settings, batch[URL].to_pylist(), self.options, self.min_side, self.pool)
        loaded = asyncio.run_coroutine_threadsafe(work, self.loop).result()
        ok, ph, pw, width, height, codes, messages = [], [], [], [], [], [], []
        for item in loaded:
            good = not isinstance(item, Failure)
            ok.append(good)
            ph.append(item.pixels.shape[0] if good else 0)
            pw.append(item.pixels.shape[1] if good else 0)
            width.append(item.width if good else None)
            height.append(item.height if good else None)
            codes.append(None if good else str(item.code))
            messages.append(None if good else item.message[:MAX_MESSAGE_CHARS])
        columns = {
            OK: pa.array(ok, pa.bool_()),
            PIXELS: pixel_column([item.pixels for item in loaded if not isinstance(item, Failure)], ok),
            PIXEL_HEIGHT: pa.array(ph, pa.int32()),
            PIXEL_WIDTH: pa.array(pw, pa.int32()),
            WIDTH: pa.array(width, pa.int64()),
            HEIGHT: pa.array(height, pa.int64()),
            ERROR_CODE: pa.array(codes, pa.string()),
            ERROR_MESSAGE: pa.array(messages, pa.string()),
        }
        for name, column in columns.items():
            batch = batch.append_column(name, column)
        return batch


# --- inference ----------------------------------------------------------------------------------


class ModelStage:
    """Ray Data callable class: one serving group (a registry model, or the models of one shared
    backbone), loaded once per actor with ``load_group``.

    Runs the group's forward once on the rows of a batch that have pixels and want any of its
    models, then each model's head on the rows that want it; adds the column ``<model name>``
    with a ``ModelResult`` JSON per row (null where the model did not run) and, internal, its
    status (``_state:<model name>``), per model. The last group's stage also finishes the batch
    (``finish_batch`` with every model's name in ``finish``): one stage fewer, so no extra
    workers, and the pixels go at once."""

    def __init__(self, group: ModelGroup, finish: Sequence[str] = (), trace_nodes: bool = False) -> None:
        from models.families import load_group  # torch and transformers: on the model actors only

        self.group = group
        self.finish = list(finish)
        self.trace_nodes = trace_nodes
        self.runner = load_group(group)
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        names = self.group.names
        n = batch.num_rows
        ok = batch[OK].to_pylist()
        wanted_column = batch[WANTED].to_pylist() if WANTED in batch.column_names else [None] * n
        wanted = [set(names) if w is None else set(names) & set(json.loads(w)) for w in wanted_column]
        rows = [i for i in range(n) if ok[i] and wanted[i]]
        outputs: dict[str, list[str | None]] = {name: [None] * n for name in names}
        states: dict[str, list[str | None]] = {name: [None] * n for name in names}
        if rows:
            pixels = pixel_views(batch[PIXELS], batch[PIXEL_HEIGHT].to_pylist(), batch[PIXEL_WIDTH].to_pylist())
            width, height = batch[WIDTH].to_pylist(), batch[HEIGHT].to_pylist()
            images = [DecodedImage(pixels=pixels[i], width=width[i], height=height[i]) for i in rows]
            for i, results in zip(rows, self._predict(images, [wanted[i] for i in rows]), strict=True):
                for name, result in results.items():
                    outputs[name][i], states[name][i] = result.to_json(), result.status.value
        for name in names:
            batch = batch.append_column(name, pa.array(outputs[name], pa.string()))
            batch = batch.append_column(state_column(name), pa.array(states[name], pa.string()))
            if self.trace_nodes:
                batch = batch.append_column(NODE_PREFIX + name, pa.array([self.node_id] * n, pa.string()))
        return finish_batch(batch, self.finish) if self.finish else batch

    def _predict(self, images: list[DecodedImage], wanted: list[set[str]]) -> list[dict[str, ModelResult]]:
        """The batch at once; if it fails, image by image, so one bad image fails only itself."""
        try:
            return self._complete(images, wanted)
        except Exception:
            if len(images) == 1:
                raise
        results = []
        for image, names in zip(images, wanted, strict=True):
            try:
                results.extend(self._complete([image], [names]))
            except Exception as exc:
                results.append({name: failed_result(ErrorCode.MODEL_FAILED, f"{name}: {describe(exc)}")
                                for name in names})
        return results

    def _complete(self, images: list[DecodedImage], wanted: list[set[str]]) -> list[dict[str, ModelResult]]:
        """One forward for the batch, then each image's wanted heads."""
        features = self.runner.features([self.runner.prepare(image) for image in images])
        if len(features) != len(images):
            raise RuntimeError(f"{self.group.names} returned {len(features)} results for {len(images)} images")
        now = utcnow()
        return [
            {name: ModelResult(status=ModelStatus.COMPLETE, version=self.runner.version_of(name), result=answer,
                               completed_at=now) for name, answer in self.runner.answer(f, names).items()}
            for f, names in zip(features, wanted, strict=True)
        ]


# --- finishing ----------------------------------------------------------------------------------


def row_status(states: dict[str, str | None], error_code: str | None) -> str:
    """An output row's status by the API's own rule (``core.schemas.image_status``), from each
    model's status on it (``None``: the model did not run on this row)."""
    if error_code:
        error = ErrorInfo(code=ErrorCode(error_code), message="")
        return image_status({}, error, started=True, canceled=False).value
    models = {name: ModelResult(status=ModelStatus(state)) for name, state in states.items() if state}
    # No model at all ran on this row (a store-backed run with nothing left to do): complete.
    return image_status(models, None, started=True, canceled=False).value


def finish_batch(batch: pa.Table, models: Sequence[str]) -> pa.Table:
    """Ray Data UDF: the status column, and the internal columns dropped."""
    states = {name: batch[state_column(name)].to_pylist() for name in models}
    codes = batch[ERROR_CODE].to_pylist()
    statuses = [
        row_status({name: states[name][i] for name in models}, codes[i]) for i in range(batch.num_rows)
    ]
    internal = [*INTERNAL, *(state_column(name) for name in models)]
    batch = batch.drop_columns([c for c in internal if c in batch.column_names])
    return batch.append_column(STATUS, pa.array(statuses, pa.string()))


# --- assembly -----------------------------------------------------------------------------------


# A model actor is worth starting only with this many batches for it to run.
BATCHES_PER_ACTOR = 4


def actor_pool(group: ModelGroup, rows: int | None = None) -> ActorPoolStrategy:
    """The group's actor pool, sized like its Serve deployment: min..max replicas (min ≥ 1).

    With a known, small number of ``rows``, no more actors than there is work for: loading a
    model costs seconds, and a run of a few dozen images is over before a second one is up."""
    low = max(1, group.autoscaling.min_replicas)
    high = max(low, group.autoscaling.max_replicas)
    if rows is not None:
        useful = math.ceil(rows / (group.batching.max_batch_size * BATCHES_PER_ACTOR))
        high = max(1, min(high, useful))
        low = min(low, high)
    return ActorPoolStrategy(min_size=low, max_size=high)


# A loader is a process of its own (Ray, Arrow, the fetcher, decode threads): starting one costs
# seconds of CPU, so one is worth it only with this many fetch batches to work through.
BATCHES_PER_LOADER = 4


def loader_count(groups: Sequence[ModelGroup], options: PipelineOptions, rows: int | None = None) -> int:
    """How many fetch/decode actors at most: the CPUs the model actors leave free, and with a
    known number of ``rows``, no more than there are ``BATCHES_PER_LOADER`` fetch batches for
    (eight images once started four loaders, and the run took twice as long as with one).

    Capped so the loaders can never take the CPUs the model actors (and any reads) need."""
    if options.loaders is not None:
        return max(1, options.loaders)
    cpus = float(ray.cluster_resources().get("CPU", 1))
    reserved = sum(g.resources.num_cpus * max(1, g.autoscaling.max_replicas) for g in groups)
    free = cpus - reserved
    per_loader = max(options.loader_cpus, 0.01)
    most = int(max(1, min(8, math.floor(free / per_loader))))
    if rows is None:
        return most
    return max(1, min(most, math.ceil(rows / (options.fetch_batch_size * BATCHES_PER_LOADER))))


def source_block_rows(rows: int, loaders: int, options: PipelineOptions) -> int:
    """Rows per source block: a full fetch batch, or fewer when that spreads a small input over
    every loader. A loader's output for one block stays one block, which one model actor then
    takes (in batches of its size), so this is also the unit the model actors share."""
    return max(1, min(options.fetch_batch_size, math.ceil(rows / loaders)))


def build_pipeline(
    source: Dataset | pa.Table,
    specs: Sequence[ModelSpec],
    settings: Settings,
    options: PipelineOptions | None = None,
) -> Dataset:
    """The lazy dataset of result rows for ``source``: rows with a ``url`` column, as a Dataset
    (streamed as it is) or as a table (its size known: split here into blocks of
    ``source_block_rows``, and no more loaders than blocks).

    Nothing runs until the caller iterates or writes it; then it streams."""
    if not specs:
        raise ValueError("no models to run")
    options = options or PipelineOptions()
    specs = fit_to_cluster(specs, settings.gpu_policy, cluster_gpus())  # GPU asks a GPU-less cluster can meet
    # Every loader from the start (never more than there are blocks), so batches reach all the
    # model actors at once; on the driver's node while it has room. Ray Data starts the loader
    # pool before the model pools, and a loader holds its CPU share for the whole run: spread
    # over the cluster (Ray Data's default), one took a node sized for a model actor and the
    # pool never started; Ray's default policy also leaves the driver's node once it is half used.
    groups = serving_groups(specs)  # models on one backbone: one stage, one forward per image
    rows = source.num_rows if isinstance(source, pa.Table) else None
    loaders = loader_count(groups, options, rows)
    block_rows = options.fetch_batch_size
    if isinstance(source, pa.Table):
        block_rows = source_block_rows(rows, loaders, options)
        loaders = max(1, min(loaders, math.ceil(rows / block_rows)))
        source = blocks(source, block_rows)
    near_driver = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    ds = source.map_batches(
        LoadStage,
        fn_constructor_kwargs={"settings": settings, "options": options, "min_side": decode_min_side(specs)},
        batch_size=block_rows,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=loaders),
        num_cpus=options.loader_cpus,
        scheduling_strategy=near_driver,
    )
    names = [spec.name for spec in specs]
    for position, group in enumerate(groups):
        ds = ds.map_batches(
            ModelStage,
            fn_constructor_kwargs={
                "group": group, "finish": names if position == len(groups) - 1 else (),
                "trace_nodes": options.trace_nodes,
            },
            batch_size=group.batching.max_batch_size,
            batch_format="pyarrow",
            compute=actor_pool(group, rows),
            num_cpus=group.resources.num_cpus,
            num_gpus=group.resources.num_gpus,
        )
    if options.wait_for_min_actors_s > 0:
        ds.context.wait_for_min_actors_s = options.wait_for_min_actors_s
    return ds
