"""What ``bulk.run`` accepts as a source, turned into a Ray dataset of rows with a ``url``.

- a list of URLs (or of dicts with a ``url`` key and any other keys),
- a pandas DataFrame with a ``url`` column,
- a CSV or Parquet manifest path (local, or any URI pyarrow can open, e.g. ``s3://``) with a
  ``url`` column and optionally ``id`` and other columns, which are passed through,
- a ``ray.data.Dataset`` with a ``url`` column (for manifests too large for the driver),
- a pyarrow Table with a ``url`` column (a manifest already read, e.g. by ``read_manifest``).

Every source but a Dataset gets a hidden row position so results come back in input order,
and an ``id`` (the position) when it has none. A manifest is read by the driver — it holds
URLs, not images — and split into small blocks so fetching starts at once on many workers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray.data
from ray.data import Dataset

from pipelines.columns import ID, ROW, URL, WANTED

Source = Sequence[str] | Sequence[Mapping[str, Any]] | str | os.PathLike[str] | pd.DataFrame | pa.Table | Dataset

BLOCK_ROWS = 32  # rows per block: enough blocks for every loader to start at once


def _table(table: pa.Table) -> pa.Table:
    if URL not in table.column_names:
        raise ValueError(f"the source has no {URL!r} column (columns: {table.column_names})")
    for name in (ROW, WANTED):
        if name in table.column_names:
            raise ValueError(f"the source column {name!r} is reserved")
    positions = pa.array(range(table.num_rows), pa.int64())
    if ID not in table.column_names:
        table = table.append_column(ID, positions)
    return table.append_column(ROW, positions)


def blocks(table: pa.Table, block_rows: int = BLOCK_ROWS) -> Dataset:
    """A dataset of ``table`` in blocks of ``block_rows`` (the unit one loader call fetches)."""
    if table.num_rows == 0:
        raise ValueError("the source has no rows")
    return ray.data.from_arrow([table.slice(i, block_rows) for i in range(0, table.num_rows, block_rows)])


def read_manifest(path: str | os.PathLike[str]) -> pa.Table:
    """A CSV or Parquet manifest (by extension; a directory is read as Parquet)."""
    text = os.fspath(path)
    if "://" in text:
        filesystem, inner = pafs.FileSystem.from_uri(text)
    else:
        filesystem, inner = pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())
    name = inner.lower()
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        options = pacsv.ParseOptions(delimiter="\t" if name.endswith(".tsv") else ",")
        with filesystem.open_input_stream(inner, compression="detect") as stream:
            return pacsv.read_csv(stream, parse_options=options)
    if name.endswith((".parquet", ".pq")) or filesystem.get_file_info(inner).type is pafs.FileType.Directory:
        return pq.read_table(inner, filesystem=filesystem)
    raise ValueError(f"{text}: a manifest must be a .csv, .tsv, .csv.gz or .parquet file (or a Parquet folder)")


def to_table(source: Source) -> pa.Table | None:
    """The source's rows as one Arrow table with positions (``None`` for a Dataset source)."""
    if isinstance(source, Dataset):
        return None
    if isinstance(source, (str, os.PathLike)):
        return _table(read_manifest(source))
    if isinstance(source, pa.Table):
        return _table(source)
    if isinstance(source, pd.DataFrame):
        return _table(pa.Table.from_pandas(source, preserve_index=False))
    if isinstance(source, Sequence):
        items = list(source)
        if all(isinstance(item, str) for item in items):
            table = pa.table({URL: pa.array(items, pa.string())})
        elif all(isinstance(item, Mapping) for item in items):
            table = pa.Table.from_pylist([dict(item) for item in items])
        else:
            raise TypeError("a list source holds URLs (str) or rows (dicts with a 'url' key), not a mix")
        return _table(table)
    raise TypeError(f"unsupported source {type(source).__name__}: a list of URLs, a manifest path, a DataFrame "
                    "or a ray.data.Dataset")
