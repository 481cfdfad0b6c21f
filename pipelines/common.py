"""Stages shared by every pipeline: validated ingest of a source into Parquet parts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from core.errors import DataError
from core.io import plan_shards
from workers.ingest import check_bucket_unique, validate_shard


def ingest(out: Path, *, source: str, shards: int, require_label: bool = False, fingerprint: str = "") -> dict[str, Any]:
    """Validate `source` shard by shard on workers and write one part file per shard into `out`.

    `fingerprint` is unused here: it is part of the cache key so that edited input files rerun.
    """
    where = os.fspath(source)
    specs = plan_shards(source, shards)
    parts = ray.get([validate_shard.remote(spec, str(out), where, require_label) for spec in specs])
    dims = {p["dim"] for p in parts}
    if len(dims) > 1:
        first = parts[0]
        other = next(p for p in parts if p["dim"] != first["dim"])
        raise DataError(
            f"{where}: mixed dimensions: rows from {other['start']} have dimension {other['dim']}, "
            f"rows from {first['start']} have {first['dim']}"
        )
    buckets = len(parts)
    sizes = ray.get([check_bucket_unique.remote(parts, b, buckets, where) for b in range(buckets)])
    rows = sum(p["rows"] for p in parts)
    assert sum(sizes) == rows, "every id falls in exactly one bucket"
    return {"rows": rows, "dim": parts[0]["dim"], "shards": len(parts), "source": where}
