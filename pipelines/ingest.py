"""The smallest real pipeline: ingest and validate a dataset, then summarise it.

    shardwalk run ingest --set source=builtin:mnist5k --set shards=4
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from shardwalk.core import validate as validate_
from shardwalk.core.dag.cache_key import InputPath
from shardwalk.core.dag.runner import Pipeline
from shardwalk.core.storage import sink
from shardwalk.core.storage.files import write_parquet
from shardwalk.pipelines.common import COLUMN_DEFAULTS, ingest_stage, read_label_map
from shardwalk.pipelines.reports.stage import ingest_report
from shardwalk.workers.ingest import part_paths, summarise_part

DEFAULTS: dict[str, Any] = {
    "source": InputPath("builtin:digits"),
    **COLUMN_DEFAULTS,
    "shards": 2,
    "require_label": False,
}


def actors(config: dict[str, Any]) -> int:
    """Ingest starts no actors: its shards are tasks (shardwalk.core.plan.limits bounds actor-starting pipelines)."""
    return 0


def validate(config: dict[str, Any]) -> None:
    """Reject out-of-range values before anything runs."""
    validate_.shards(config["shards"])


def summarise(out: Path, ingest: Path) -> dict[str, Any]:
    """Per-dimension mean/std/min/max, vector norms and label counts, merged from per-part statistics."""
    stats = ray.get([summarise_part.remote(sink.readable(p)) for p in part_paths(ingest)])
    n = sum(s["rows"] for s in stats)
    mean = sum(s["sum"] for s in stats) / n
    var = np.maximum(sum(s["sumsq"] for s in stats) / n - mean**2, 0.0)
    write_parquet(
        pa.table(
            {
                "dim": np.arange(len(mean), dtype=np.int64),
                "mean": mean,
                "std": np.sqrt(var),
                "min": np.min([s["min"] for s in stats], axis=0),
                "max": np.max([s["max"] for s in stats], axis=0),
            }
        ),
        out / "dim_stats.parquet",
    )
    labels: dict[int, int] = {}
    for s in stats:
        for label, count in s["labels"].items():
            labels[label] = labels.get(label, 0) + count
    values = read_label_map(ingest)  # report the user's label values, not the class indices
    if values is not None:
        labels = {int(values[k]): v for k, v in labels.items()}
    norm_mean = sum(s["norm_sum"] for s in stats) / n
    norm_std = float(np.sqrt(max(sum(s["norm_sumsq"] for s in stats) / n - norm_mean**2, 0.0)))
    summary = {
        "rows": n,
        "dim": len(mean),
        "norm_mean": norm_mean,
        "norm_std": norm_std,
        "classes": len(labels),
        "label_counts": {str(k): v for k, v in sorted(labels.items())},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return {k: v for k, v in summary.items() if k != "label_counts"}


def build(config: dict[str, Any]) -> Pipeline:
    p = Pipeline("ingest")
    ingest_stage(p, config, require_label=config["require_label"])
    p.stage("summarise", summarise, inputs=["ingest"], num_cpus=0)
    p.stage("report", ingest_report, inputs={"summary": "summarise"}, num_cpus=0)
    return p
