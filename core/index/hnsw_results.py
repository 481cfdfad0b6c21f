"""Shard answers → one result: hnswlib labels as padded ids, routed pieces joined, batches merged, tables.

Pure (numpy / pyarrow): the shard actors and the driver-side index call these, so a search, the kNN graph
and a streamed query build their rows the same way (docs/design.md, "HNSW shards" and "kNN graph").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from shardwalk.core.data.schema import KNN_GRAPH_SCHEMA
from shardwalk.core.index.hnsw import PAD_ID, empty_result, merge_results


def pad_to_k(ids: np.ndarray, dists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen (q, kk) answers to (q, k) with -1 / +inf: a shard with fewer than k live items answers fewer."""
    if ids.shape[1] < k:
        pad_i, pad_d = empty_result(len(ids), k - ids.shape[1])
        ids, dists = np.hstack([ids, pad_i]), np.hstack([dists, pad_d])
    return ids, dists


def labels_as_ids(labels: np.ndarray, dists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """hnswlib's (uint64 labels, distances) as int64 ids / float32 distances padded to k columns."""
    return pad_to_k(np.asarray(labels, np.uint64).view(np.int64), np.asarray(dists, np.float32), k)


def narrow_ids(ids: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A shard's answer with int32 ids when every id fits (the merges widen them back to int64).

    Ray returns a result under 100 KB inline with its reply instead of through the object store: at k = 10
    that holds 1,000-query answers with int32 ids (80 KB) but not with int64 ones (120 KB); ~1 ms a call.
    """
    if ids.size and np.iinfo(np.int32).min <= ids.min() and ids.max() <= np.iinfo(np.int32).max:
        return ids.astype(np.int32), dists
    return ids, dists


def concat_pieces(pieces: Sequence[tuple[np.ndarray, np.ndarray]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Routed (ids, vectors) pieces as one (ids, float32 (n, dim)); a single piece stays a zero-copy view."""
    parts = [p for p in pieces if len(p[0])]
    if len(parts) == 1:
        return parts[0][0].astype(np.int64, copy=False), np.ascontiguousarray(parts[0][1], np.float32)
    ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    vecs = np.concatenate([p[1].reshape(-1, dim) for p in parts]) if parts else np.empty((0, dim), np.float32)
    return ids.astype(np.int64, copy=False), np.ascontiguousarray(vecs, np.float32)


def merge_batches(
    q: int, k: int, answered: Iterable[tuple[int, int, np.ndarray, tuple[np.ndarray, np.ndarray]]]
) -> tuple[np.ndarray, np.ndarray]:
    """(q, k) result from shard answers, each (batch start, batch stop, rows of the batch it answers, answer).

    Every batch is merged over the shards that answered it (shardwalk.core.index.hnsw.merge_results); a batch nobody
    answered stays padding.
    """
    ids, dists = empty_result(q, k)
    per_batch: dict[int, list[tuple[int, np.ndarray, tuple[np.ndarray, np.ndarray]]]] = {}
    for start, stop, rows, answer in answered:
        per_batch.setdefault(start, []).append((stop, rows, answer))
    for start, got in per_batch.items():
        stop, rows, answer = got[0]
        if len(got) == 1 and len(rows) == stop - start and answer[0].shape == (len(rows), k):
            mi, md = in_order(*answer)  # one shard answered every row: nothing to merge (most searches)
        else:
            parts = []
            for stop, rows, (answer_ids, answer_dists) in got:
                pi, pd = empty_result(stop - start, k)
                pi[rows], pd[rows] = answer_ids, answer_dists
                parts.append((pi, pd))
            mi, md = merge_results(parts, k)
        ids[start : start + len(mi)], dists[start : start + len(mi)] = mi, md
    return ids, dists


def in_order(ids: np.ndarray, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One shard's answer as `merge_results([answer], k)` gives it, sorting only the rows that need it.

    hnswlib returns each row by ascending distance with padding last, so a row needs work only where two
    distances tie (ids then ascending) or it is out of order; those rows alone go through merge_results. A
    shard's answer never lists an id twice in a row (hnswlib labels and exact search over unique ids), which
    is the case where merge_results would drop more than padding.
    """
    ids, dists = np.asarray(ids, np.int64), np.asarray(dists, np.float32)
    finite = np.isfinite(dists)
    ok = (dists[:, 1:] > dists[:, :-1]) | ~finite[:, 1:]  # strictly ascending up to the padding
    ok &= finite[:, :-1] | ~finite[:, 1:]  # padding only at the end
    bad = np.flatnonzero(~ok.all(axis=1))
    out_ids = np.where(finite, ids, np.int64(PAD_ID))
    out_d = np.where(finite, dists, np.float32(np.inf))
    if bad.size:
        out_ids[bad], out_d[bad] = merge_results([(ids[bad], dists[bad])], ids.shape[1])
    return out_ids, out_d


def knn_graph_table(ids: Any, nbrs: np.ndarray, dists: np.ndarray) -> pa.Table:
    """docs/design.md's knn-graph table: one row per query id with its k neighbour ids and distances."""
    k = nbrs.shape[1]
    offsets = pa.array(np.arange(0, nbrs.size + 1, k, dtype=np.int32))
    return pa.table(
        [pa.array(ids), pa.ListArray.from_arrays(offsets, pa.array(nbrs.reshape(-1))),
         pa.ListArray.from_arrays(offsets, pa.array(dists.reshape(-1), pa.float32()))],
        schema=KNN_GRAPH_SCHEMA,
    )
