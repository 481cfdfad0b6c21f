"""Stages shared by every pipeline: validated ingest of a source into Parquet parts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.errors import DataError
from core.io import plan_shards
from core.unique import check_unique, id_buckets
from workers.ingest import check_bucket_unique, split_part_ids, validate_shard
from workers.quiet import get_all


def ingest(out: Path, *, source: str, shards: int, require_label: bool = False, fingerprint: str = "") -> dict[str, Any]:
    """Validate `source` shard by shard on workers and write one part file per shard into `out`.

    `fingerprint` is unused here: it is part of the cache key so that edited input files rerun.
    """
    where = os.fspath(source)
    specs = plan_shards(source, shards)
    parts = get_all([validate_shard.remote(spec, str(out), where, require_label) for spec in specs])
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
    assert check_unique(reports, where) == rows, "every id falls in exactly one bucket"
    return {"rows": rows, "dim": parts[0]["dim"], "shards": len(parts), "source": where}
