"""Stages shared by every pipeline: validated ingest of a source into Parquet parts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import ray

from shardwalk.core.dag.cache_key import InputPath
from shardwalk.core.dag.runner import Pipeline
from shardwalk.core.data.builtin import is_builtin
from shardwalk.core.data.schema import Columns, apply_columns
from shardwalk.core.data.unique import check_unique, id_buckets
from shardwalk.core.errors import DataError, InvariantError
from shardwalk.core.storage import sink
from shardwalk.core.storage.sources import plan_shards, source_schema
from shardwalk.workers.ingest import check_bucket_unique, encode_part, split_part_ids, validate_shard
from shardwalk.workers.progress_channel import wait_counted
from shardwalk.workers.quiet import get_all

LABELS_FILE = "_labels.json"  # leading underscore: Parquet dataset readers skip it
COLUMN_DEFAULTS: dict[str, str] = {"id_column": "id", "vector_column": "vector", "label_column": "label"}
INGEST_VERSION = "2"  # 2: labels mapped to 0..K-1 and the map written beside the parts


def ingest_stage(p: Pipeline, config: dict[str, Any], *, require_label: bool, name: str = "ingest") -> None:
    """Add the validated ingest of `config['source']` (with its column options) to a pipeline."""
    columns = Columns.from_config(config)
    source = config["source"]  # an input file, directory or URI: its fingerprint is part of the key
    p.stage(name, ingest, version=INGEST_VERSION, num_cpus=0, declares_rows=True, params={
        "source": InputPath(source) if isinstance(source, str) else source, "shards": config["shards"],
        "require_label": require_label, "columns": {"id": columns.id, "vector": columns.vector, "label": columns.label},
    })


def check_source_columns(config: dict[str, Any]) -> None:
    """The columns a config names (`id_column`, `vector_column`, `label_column`) exist in its `source` and
    `test_source`, read from the first file's footer: a typo is one line before Ray starts, not a failed ingest."""
    columns = Columns.from_config(config)
    if "id_column" not in config or columns.is_default():  # nothing renamed (or a pipeline of your own): ingest checks
        return
    for key in ("source", "test_source"):
        source = config.get(key)
        if isinstance(source, str) and source and not is_builtin(source):
            apply_columns(source_schema(source).empty_table(), columns, str(source))


def ingest(
    out: Path, *, source: str, shards: int, require_label: bool = False, columns: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Validate `source` shard by shard on workers and write one part file per shard into `out`.

    `columns` maps the user's `id`/`vector`/`label` column names (see `shardwalk.core.data.schema.Columns`). The metric
    `rows` is declared (the commit refuses an output holding other than that many rows).
    """
    where = os.fspath(source)
    specs = plan_shards(source, shards or max(1, int(ray.cluster_resources().get("CPU", 1))))  # 0: one per CPU
    cols = Columns(**(columns or {}))
    dest = sink.destination(out)  # on a store runs dir: tasks on any node put their parts into the attempt
    parts = wait_counted([validate_shard.remote(spec, dest, where, require_label, cols) for spec in specs],
                         "ingest", "validate", rows=[s.num_rows for s in specs], get=get_all)
    sink.record(p["files"] for p in parts)
    dims = {p["dim"] for p in parts}
    if len(dims) > 1:
        first = parts[0]
        other = next(p for p in parts if p["dim"] != first["dim"])
        raise DataError(
            f"{where}: mixed dimensions: rows from {other['start']} have dimension {other['dim']}, "
            f"rows from {first['start']} have {first['dim']}"
        )
    buckets = id_buckets(len(parts))
    split = [split_part_ids.options(num_returns=buckets).remote(p, buckets) for p in parts]
    split = [refs if buckets > 1 else [refs] for refs in split]
    reports = get_all([check_bucket_unique.remote(*[refs[b] for refs in split]) for b in range(buckets)])
    rows = sum(p["rows"] for p in parts)
    if check_unique(reports, where) != rows:  # every id falls in exactly one bucket
        raise InvariantError(f"{where}: the id buckets hold a different number of ids than the parts ({rows})")
    metrics = {"rows": rows, "dim": parts[0]["dim"], "shards": len(parts), "source": where}
    if parts[0]["labels"] is not None:
        metrics["classes"] = map_labels(out, parts, where, cols.label, require_label)
    return metrics


def map_labels(out: Path, parts: list[dict[str, Any]], where: str, column: str, require_label: bool) -> int:
    """Map the labels of every part to 0..K-1 (rewriting parts only when they are not already) and write the map."""
    counts: dict[int, int] = {}
    for part in parts:
        for value, count in part["labels"].items():
            counts[value] = counts.get(value, 0) + count
    classes = sorted(counts)
    if require_label and len(classes) < 2:
        raise DataError(f"{where}: label column '{column}' has a single class {classes}; at least 2 are needed")
    if classes != list(range(len(classes))):
        sink.record(ray.get([encode_part.remote(p, classes) for p in parts]))
    table = {"column": column, "classes": classes, "counts": [counts[c] for c in classes]}
    (out / LABELS_FILE).write_text(json.dumps(table, indent=1))
    return len(classes)


def read_label_map(ingest_dir: str | os.PathLike) -> np.ndarray | None:
    """The user's label value of each class index 0..K-1, or None when the data has no labels."""
    path = Path(ingest_dir) / LABELS_FILE
    if not path.is_file():
        return None
    return np.asarray(json.loads(path.read_text())["classes"], dtype=np.int64)
