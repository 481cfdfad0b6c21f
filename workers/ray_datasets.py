"""ray.data.Dataset sources: recognised, checked for the vectors columns, staged as Parquet parts for a build."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from shardwalk.core.errors import DataError
from shardwalk.workers.quiet import quiet_ray_data

REQUIRED = ("id", "vector")


def is_ray_dataset(source: Any) -> bool:
    """Whether `source` is a ray.data.Dataset (without importing Ray Data for other sources)."""
    return type(source).__module__.startswith("ray.data") and hasattr(source, "map_batches")


def check_columns(dataset: Any, required: tuple[str, ...] = REQUIRED) -> None:
    """DataError naming the missing columns of a ray.data.Dataset, before any work starts."""
    schema = dataset.schema()
    names = list(schema.names) if schema is not None else []
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"ray.data.Dataset: missing column(s) {missing} (has {names})")


def as_vectors_table(batch: dict[str, np.ndarray]) -> pa.Table:
    """A Ray Data batch with `vector` as docs/design.md's fixed_size_list<float32> (Ray stores arrays as tensors)."""
    vecs = np.asarray(batch["vector"])
    if vecs.dtype == object:  # ragged or per-row arrays: stack them (validation names a bad row later)
        vecs = np.stack([np.asarray(v) for v in vecs]) if len(vecs) else np.empty((0, 0), np.float32)
    if vecs.ndim != 2:
        raise DataError(f"ray.data.Dataset: column 'vector' must hold 1-D vectors, got shape {vecs.shape}")
    flat = pa.array(np.ascontiguousarray(vecs, np.float32).reshape(-1))
    columns = {name: pa.array(values) for name, values in batch.items() if name != "vector" and np.asarray(values).ndim == 1}
    columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1])
    return pa.table(columns)


@contextlib.contextmanager
def staged_dataset(dataset: Any, parent: str | None = None) -> Iterator[str]:
    """The dataset written as Parquet parts in a private temporary directory, removed afterwards.

    A build reads every row twice (sizing, then its shard's rows by position): Parquet parts give the
    shard actors positional reads, which a streaming Dataset does not. On a multi-node cluster `parent`
    must be on the shared file system (the build's `workdir`).
    """
    check_columns(dataset)
    quiet_ray_data()
    directory = tempfile.mkdtemp(prefix="shardwalk-dataset-", dir=parent)
    try:
        dataset.map_batches(as_vectors_table, batch_format="numpy").write_parquet(directory)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
