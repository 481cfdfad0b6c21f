"""Cross-shard id uniqueness in one pass over the data: each part's ids are split into buckets by value,
and each bucket is checked on its own (a map/reduce, so every id is read once, whatever the shard count)."""

from __future__ import annotations

from typing import Any

import numpy as np

from shardwalk.core.data.schema import ID
from shardwalk.core.errors import DataError

Piece = tuple[np.ndarray, np.ndarray]  # (ids, global row numbers) of one part that fall in one bucket


def id_buckets(parts: int, limit: int = 16) -> int:
    """How many buckets to check in parallel: one per part up to `limit` (more only adds hand-offs)."""
    return max(1, min(parts, limit))


def split_by_bucket(ids: np.ndarray, start: int, buckets: int) -> list[Piece]:
    """The ids of one part (whose first row is global row `start`), grouped by `id mod buckets`."""
    which = np.mod(ids, buckets)
    rows = np.arange(start, start + len(ids), dtype=np.int64)
    return [(ids[which == b], rows[which == b]) for b in range(buckets)]


def bucket_report(pieces: list[Piece]) -> dict[str, Any]:
    """A bucket's size and its first duplicate (the id whose repeat has the lowest row), if any."""
    all_ids = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.int64)
    all_rows = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.int64)
    order = np.lexsort((all_rows, all_ids))
    sorted_ids = all_ids[order]
    dup = sorted_ids[1:] == sorted_ids[:-1]
    report: dict[str, Any] = {"rows": int(all_ids.size), "duplicate": None}
    if dup.any():
        later = all_rows[order][1:][dup]
        first = int(np.argmin(later))
        report["duplicate"] = (int(sorted_ids[1:][dup][first]), int(later[first]))
    return report


def check_unique(reports: list[dict[str, Any]], where: str) -> int:
    """The total number of ids; DataError naming the duplicate met first in row order, over all buckets."""
    dups = [r["duplicate"] for r in reports if r["duplicate"] is not None]
    if dups:
        value, row = min(dups, key=lambda d: d[1])
        raise DataError(f"{where}: column '{ID}' has duplicate value {value} at row {row}")
    return sum(r["rows"] for r in reports)
