"""The notebook API: run registry models over many images with Ray Data, get a DataFrame back.

    >>> from pipelines import bulk
    >>> df = bulk.run(["https://example.com/a.jpg", "https://example.com/b.jpg"], ["object_detection"])
    >>> df[["url", "status", "object_detection"]]

``run`` starts a local Ray (explicit CPUs) when none is running, or connects to ``address``;
the pipeline streams (fetch → decode → batched inference per model), so memory stays flat
however many images there are. With ``output="results.parquet"`` the rows are written to one
Parquet file as they stream out and a small summary comes back instead.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import Dataset

from core.registry import BUILTIN_PROFILES, LOCAL_PROFILES, ModelSpec, load_registry
from core.settings import RAY_NAMESPACE, Settings
from pipelines.columns import ERROR_CODE, OUTPUT_COLUMNS, ROW, STATUS
from pipelines.dataset import PipelineOptions, build_pipeline
from pipelines.sources import Source, to_table

log = logging.getLogger("sightwire.bulk")

NULLABLE_INTS = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int32Dtype()}

__all__ = ["PipelineOptions", "ensure_ray", "resolve_models", "run", "show", "stream"]


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (default: ``RAY_ADDRESS``, as ``ray.init`` would), or start a private
    local Ray; returns whether this call connected or started one.

    A local start names its CPUs explicitly and never joins whatever cluster a machine-wide
    address file points at (``address="local"``); its GCS takes a free port, never 6379."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        ray.init(address=address, namespace=RAY_NAMESPACE, log_to_driver=False)
    else:
        ray.init(
            address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
            namespace=RAY_NAMESPACE, log_to_driver=False,
        )
    return True


def resolve_models(
    models: str | Sequence[str] | None, profile: str, models_dir: Path, settings: Settings
) -> list[ModelSpec]:
    """The registry specs for ``models`` (``None``: every model of the profile); builds a local
    profile (``tiny``, ``bench``: random weights, no network) on first use."""
    if profile in LOCAL_PROFILES:
        from models.tiny import ensure_local_profile

        ensure_local_profile(models_dir, profile)
    registry = load_registry(profile, models_dir)
    names = registry.names() if models is None else [models] if isinstance(models, str) else list(models)
    names = list(dict.fromkeys(names))
    unknown = [name for name in names if name not in registry]
    if unknown or not names:
        raise ValueError(f"unknown models {unknown} for profile {profile!r}; it has {registry.names()}")
    return [registry[name] for name in names]


def stream(
    source: Source,
    specs: Sequence[ModelSpec],
    settings: Settings,
    *,
    progress: bool = True,
    options: PipelineOptions | None = None,
) -> tuple[Dataset, bool]:
    """The lazy result dataset for ``source`` and whether its rows carry input positions."""
    table = to_table(source)
    # A Dataset streams as it is, rows in completion order; a table's rows carry their positions.
    pipeline = build_pipeline(source if table is None else table, specs, settings, options)  # type: ignore[arg-type]
    pipeline.context.enable_progress_bars = progress
    pipeline.context.enable_operator_progress_bars = progress
    return pipeline, table is not None


def _batches(pipeline: Dataset, on_rows: Callable[[int], None] | None = None) -> Iterator[pa.Table]:
    for table in pipeline.iter_batches(batch_size=None, batch_format="pyarrow"):
        if on_rows is not None:
            on_rows(table.num_rows)
        yield table


def _decode_results(frame: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    for name in models:
        frame[name] = [json.loads(value) if isinstance(value, str) else None for value in frame[name]]
    return frame


def _column_order(columns: Sequence[str], models: Sequence[str]) -> list[str]:
    fixed = [c for c in OUTPUT_COLUMNS if c in columns]
    rest = [c for c in columns if c not in fixed and c not in models and c != ROW]
    return [*fixed, *models, *rest]


def run(
    source: Source,
    models: str | Sequence[str] | None = None,
    *,
    profile: str | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
    output: str | os.PathLike[str] | None = None,
    progress: bool = True,
    address: str | None = None,
    num_cpus: int | None = None,
    options: PipelineOptions | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Run ``models`` over every image of ``source``.

    Args:
        source: a list of URLs (or of dicts with ``url``), a CSV/Parquet manifest path with a
            ``url`` column (``id`` and other columns are passed through), a DataFrame, an Arrow
            table, or a ``ray.data.Dataset``.
        models: registry model names (one name, a list, or ``None`` for all of the profile).
        profile: ``tiny``, ``bench``, ``pretrained`` or a registry YAML path (default:
            ``settings.models``).
        models_dir: where local profiles are built / ``${models_dir}`` points (default: settings).
        settings: Sightwire settings (URL policy, size limits); default ``Settings.from_env()``.
            Private addresses (e.g. loopback) are refused unless ``allow_private_cidrs`` lets them.
        output: a ``.parquet`` path: write every row there (streamed) and return a summary.
        progress: show Ray Data's progress bars.
        address: a Ray cluster to run on (when Ray is not initialised yet); default: local Ray.
        num_cpus: CPUs of a local Ray started here (default: all of this machine's).
        options: pipeline knobs (loader batch size, fetch concurrency, ...).
        on_rows: called with the number of rows of each batch as it comes out (one progress bar
            for the whole run, as ``sightwire bulk run`` draws).

    Returns:
        One row per image: ``url``, ``id``, ``status`` (complete/partial/failed), ``width``,
        ``height``, ``error_code``, ``error_message``, one column per model holding its result
        (``{"status", "version", "result" | "error", "completedAt"}``, ``None`` where the image
        failed), then the source's other columns — in input order, except for a Dataset source.
        With ``output``: counts per status and error code; ``.attrs`` has the totals and timing.
    """
    settings = settings or Settings.from_env()
    profile = profile or settings.models
    directory = Path(models_dir).expanduser() if models_dir is not None else settings.models_dir
    if profile not in BUILTIN_PROFILES:
        profile = str(Path(profile).expanduser())
    specs = resolve_models(models, profile, directory, settings)
    names = [spec.name for spec in specs]
    ensure_ray(address, num_cpus)
    started = time.monotonic()
    pipeline, ordered = stream(source, specs, settings, progress=progress, options=options)
    if output is not None:
        return _write(_batches(pipeline, on_rows), Path(output).expanduser(), names, started)
    tables = list(_batches(pipeline, on_rows))
    if not tables:
        return pd.DataFrame(columns=_column_order(OUTPUT_COLUMNS, names))
    table = pa.concat_tables(tables, promote_options="permissive")
    frame = table.to_pandas(types_mapper=NULLABLE_INTS.get)  # widths stay integers beside nulls
    if ordered:
        frame = frame.sort_values(ROW, kind="stable").reset_index(drop=True)
    frame = _decode_results(frame, names)
    frame = frame[_column_order(list(frame.columns), names)]
    frame.attrs.update(_timing(len(frame), started))
    return frame


def show(frame: pd.DataFrame, *, settings: Settings | None = None, limit: int = 50) -> Any:
    """The first ``limit`` rows of ``run``'s DataFrame as thumbnails with their boxes, labels and
    scores (Jupyter displays it). The images are downloaded again under ``settings``' URL policy:
    pass the settings the run used."""
    from imaging.pictures import FrameView

    return FrameView.of(frame, settings or Settings.from_env(), limit)


def _timing(images: int, started: float) -> dict[str, Any]:
    seconds = time.monotonic() - started
    return {"images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 2)}


def _write(batches: Iterator[pa.Table], path: Path, models: Sequence[str], started: float) -> pd.DataFrame:
    """Stream every batch into one Parquet file on this machine; return counts per outcome."""
    path.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[tuple[str, str | None], int] = {}
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    images = 0
    try:
        for table in batches:
            table = table.drop_columns([c for c in (ROW,) if c in table.column_names])
            table = table.select(_column_order(table.column_names, models))
            if writer is None:
                schema = table.schema
                writer = pq.ParquetWriter(path, schema)
            writer.write_table(table.cast(schema))
            images += table.num_rows
            for status, code in zip(table[STATUS].to_pylist(), table[ERROR_CODE].to_pylist(), strict=True):
                counts[(status, code)] = counts.get((status, code), 0) + 1
    finally:
        if writer is not None:
            writer.close()
    summary = pd.DataFrame(
        [{"status": s, "error_code": c, "images": n} for (s, c), n in sorted(counts.items(), key=str)],
        columns=["status", "error_code", "images"],
    )
    summary.attrs.update({"output": str(path), **_timing(images, started)})
    return summary
