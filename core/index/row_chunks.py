"""A part's rows as zero-copy numpy views of its Arrow record batches, released front to back as routed.

Why: `combine_chunks` on a many-file part copies every vector once more, and one contiguous array can only
be freed whole — after the last chunk is routed. Kept per record batch, nothing is copied on read and
each batch's buffers are dropped as soon as every row of it has been routed, so during a build the
staged rows shrink while the index grows (docs/scale.md, "Memory").
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from shardwalk.core.data.schema import to_numpy


class RowChunks:
    """(ids, vectors) of a vectors table, batch by batch; `rows(lo, hi)` views or (across batches) copies."""

    def __init__(self, ids: list[np.ndarray], vecs: list[np.ndarray | None], dim: int) -> None:
        self._ids = ids
        self._vecs = vecs
        self.dim = dim
        self.bounds = np.concatenate([[0], np.cumsum([len(i) for i in ids], dtype=np.int64)])

    @classmethod
    def from_table(cls, table: pa.Table, dim: int) -> RowChunks:
        """Views of every record batch of a validated vectors table (no copy of the vectors)."""
        ids, vecs = [], []
        for batch in table.select(["id", "vector"]).to_batches():
            if batch.num_rows:
                i, v = to_numpy(pa.Table.from_batches([batch]))
                ids.append(i)
                vecs.append(v)
        return cls(ids, vecs, dim)

    @classmethod
    def of(cls, ids: np.ndarray, vecs: np.ndarray) -> RowChunks:
        return cls([ids], [vecs], vecs.shape[1] if vecs.ndim == 2 else 0)

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def all_ids(self) -> np.ndarray:
        """Every id (a copy of 8 bytes a row: small next to the vectors)."""
        return np.concatenate(self._ids) if self._ids else np.empty(0, np.int64)

    def batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of each batch still held."""
        return [(i, v) for i, v in zip(self._ids, self._vecs) if v is not None]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of the given sorted global row numbers (a copy)."""
        out = np.empty((len(rows), self.dim), np.float32)
        which = np.searchsorted(self.bounds, rows, side="right") - 1
        for b in np.unique(which):
            sel = which == b
            out[sel] = self._vec(b)[rows[sel] - self.bounds[b]]
        return out

    def rows(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [lo, hi): views when they lie in one batch, else a copy of just this span."""
        if hi <= lo or not self._ids:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        first = int(np.searchsorted(self.bounds, lo, side="right") - 1)
        last = int(np.searchsorted(self.bounds, hi, side="left") - 1)
        if first == last:
            off = self.bounds[first]
            return self._ids[first][lo - off : hi - off], self._vec(first)[lo - off : hi - off]
        spans = [(b, max(lo, self.bounds[b]) - self.bounds[b], min(hi, self.bounds[b + 1]) - self.bounds[b])
                 for b in range(first, last + 1)]
        return (np.concatenate([self._ids[b][s:e] for b, s, e in spans]),
                np.concatenate([self._vec(b)[s:e] for b, s, e in spans]))

    def release_before(self, row: int) -> int:
        """Drop the vectors of every batch that ends at or before `row`; returns how many batches are dropped."""
        for b in range(len(self._vecs)):
            if self.bounds[b + 1] <= row:
                self._vecs[b] = None
        return sum(v is None for v in self._vecs)

    def _vec(self, b: int) -> np.ndarray:
        vec = self._vecs[b]
        if vec is None:
            raise IndexError(f"rows of batch {b} were already released")
        return vec
