"""Ray tasks that validate and write one shard each, and check id uniqueness across shards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from shardwalk.core.data.schema import (
    ID,
    LABEL,
    VECTOR,
    Columns,
    apply_columns,
    check_label_column,
    encode_labels,
    validate_vectors,
    vector_dim,
)
from shardwalk.core.data.unique import Piece, bucket_report, split_by_bucket
from shardwalk.core.errors import DataError
from shardwalk.core.storage import sink
from shardwalk.core.storage.sources import ShardSpec, read_shard, releasing_arrow_memory


@ray.remote(num_cpus=1, max_retries=2)
@releasing_arrow_memory
def validate_shard(
    spec: ShardSpec, out_dir: str, where: str, require_label: bool, columns: Columns = Columns()
) -> dict[str, Any]:
    """Read my rows, map the user's columns, validate them (global row numbers in errors), write my part file."""
    raw = read_shard(spec)
    table = apply_columns(raw, columns, where)
    if require_label and LABEL not in table.column_names:
        raise DataError(f"{where}: label column '{columns.label}' is missing; found {raw.column_names} (set label_column)")
    check_label_column(table, where, user_name=columns.label, offset=spec.start)
    table = validate_vectors(table, where=where, require_label=require_label, row_offset=spec.start)
    files = sink.put_parquet(table, out_dir, sink.PART.format(spec.index))  # on a store: straight into the attempt
    ids = table.column(ID).to_numpy()
    labels = None
    if LABEL in table.column_names:
        values, counts = np.unique(table.column(LABEL).to_numpy(), return_counts=True)
        labels = {int(v): int(c) for v, c in zip(values, counts)}
    return {
        "labels": labels,
        "index": spec.index,
        "path": next(iter(files)),
        "dir": out_dir,
        "files": files,
        "rows": table.num_rows,
        "start": spec.start,
        "dim": vector_dim(table),
        "id_min": int(ids.min()),
        "id_max": int(ids.max()),
    }


@ray.remote(num_cpus=1, max_retries=2)
@releasing_arrow_memory
def split_part_ids(part: dict[str, Any], buckets: int) -> Any:
    """Read one part's ids once and hand each bucket its share (`num_returns=buckets`)."""
    ids = pq.read_table(part["path"], columns=[ID]).column(ID).to_numpy()
    pieces = split_by_bucket(ids, part["start"], buckets)
    return pieces[0] if buckets == 1 else pieces


@ray.remote(num_cpus=1, max_retries=2)
def check_bucket_unique(*pieces: Piece) -> dict[str, Any]:
    """One bucket's size and first duplicate id across all parts (shardwalk.core.data.unique.bucket_report)."""
    return bucket_report(list(pieces))


@ray.remote(num_cpus=1, max_retries=2)
@releasing_arrow_memory
def encode_part(part: dict[str, Any], classes: list[int]) -> dict[str, Any]:
    """Rewrite one part (of `validate_shard`) with its labels replaced by class indices 0..K-1; its new entry."""
    table = encode_labels(pq.read_table(part["path"]), np.asarray(classes, dtype=np.int64))
    return sink.put_parquet(table, part["dir"], sink.PART.format(part["index"]))


@ray.remote(num_cpus=1, max_retries=2)
@releasing_arrow_memory
def standardize_part(path: str, out_dir: str, name: str, mean: np.ndarray, scale: np.ndarray) -> dict[str, Any]:
    """Put one part with its vectors as (x - mean) / scale, other columns unchanged; its manifest entry."""
    table = pq.read_table(path)
    col = table.column(VECTOR).combine_chunks()
    d = col.type.list_size
    x = (col.values.to_numpy(zero_copy_only=False).reshape(-1, d) - mean) / scale
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).reshape(-1)), d)
    return sink.put_parquet(table.set_column(table.schema.get_field_index(VECTOR), VECTOR, vectors), out_dir, name)


@ray.remote(num_cpus=1, max_retries=2)
@releasing_arrow_memory
def summarise_part(path: str) -> dict[str, Any]:
    """Sufficient statistics of one part: per-dimension sums, norms, label counts."""
    table = pq.read_table(path)
    col = table.column(VECTOR).combine_chunks()
    d = col.type.list_size
    x = col.values.to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float64)
    labels: dict[int, int] = {}
    if "label" in table.column_names:
        values, counts = np.unique(table.column("label").to_numpy(), return_counts=True)
        labels = {int(v): int(c) for v, c in zip(values, counts)}
    norms = np.linalg.norm(x, axis=1)
    return {
        "rows": len(x),
        "sum": x.sum(axis=0),
        "sumsq": (x * x).sum(axis=0),
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "norm_sum": float(norms.sum()),
        "norm_sumsq": float((norms * norms).sum()),
        "labels": labels,
    }


def part_paths(directory: str | Path) -> list[Path]:
    """The part files of an ingest output, in shard order."""
    paths = sorted(Path(directory).glob("part-*.parquet"))
    if not paths:
        raise DataError(f"{directory}: holds no part-*.parquet files")
    return paths

