"""The all-points kNN graph without an HNSW index: balanced k-means partitions, an exact local graph in each
(blocked brute force, X·Yᵀ by BLAS), per-point merge across a point's partitions, neighbours-of-neighbours
refinement across partition borders (docs/design.md, "kNN graph without an index").

Pure numpy/numba, no Ray: workers/knn_partition.py runs these on the shard actors. Every result row is sorted
by (distance, id) with exactly recomputed distances, so ties (duplicate vectors) break by id and the graph
does not depend on how rows were blocked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from numba import njit, prange

from shardwalk.core import progress
from shardwalk.core.errors import DataError
from shardwalk.core.index import hnsw
from shardwalk.core.index.graph_settings import (
    BLOCK,
    REFINE_MIN_RATE,
    GraphSettings,
    check_k,
    partitions_for,
    sample_rows,
)

FAST = {"reassoc", "contract", "nsz", "arcp"}  # vectorised sums; never "ninf"/"nnan": padding is +inf
RERANK_MARGIN = 8  # candidates kept from the BLAS distances beyond k, re-ranked with exact distances
PROBE_ROWS = 2000  # rows a round is tried on first to estimate its update rate (at least 2 % of the rows)
BALANCE = 1.3  # a cell's memberships at most this x the mean (on the k-means sample)
KMEANS_ITERS = 10  # Lloyd iterations on the sample
SEED_ROWS_PER_CELL = 16  # k-means++ seeds on this many sampled rows per cell
OFFSET_ROWS_PER_CELL = 16  # balancing offsets are fitted on at most this many of the sample's rows per cell
ASSIGN_ROWS = 16_384  # rows per block when assigning rows to their cells


# ----------------------------------------------------------------------------- partitions


def train_partitions(sample: np.ndarray, parts: int, space: str, seed: int = 0, overlap: int = 1,
                     balance: float = BALANCE, threads: int = 1) -> hnsw.Router:
    """Balanced k-means centroids (shardwalk.core.index.hnsw's router) whose offsets keep every cell's share of
    the sample's `overlap` nearest-cell memberships within `balance` x the mean: the local graphs cost
    Σ size², and a cell that is many points' second choice would otherwise hold several times the mean.
    The whole sample in one process: the same steps the actors run on their slices (fit_router)."""
    x = hnsw.prepare(sample, space)
    centroids, spares = seed_centroids(x, parts, seed)
    # the offsets need only the cells' shares: fitted on a seeded subsample (each round scans rows x cells)
    fit = np.zeros(len(x), bool)
    fit[np.random.default_rng([seed, 1]).choice(len(x), min(len(x), offset_rows(parts)), replace=False)] = True
    one = TrainingSlice(x, fit, threads)
    return fit_router(centroids, spares, space, overlap, lambda name, *args: [getattr(one, name)(*args)], balance)


def offset_rows(parts: int) -> int:
    """Sample rows the balancing offsets are fitted on (at most; all of a smaller sample)."""
    return max(OFFSET_ROWS_PER_CELL * parts, 4096)


def seed_centroids(x: np.ndarray, parts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ centres on a seeded subsample of SEED_ROWS_PER_CELL rows per cell of the whole (`prepare`d,
    id-ordered) sample: the seeding is sequential (one pass per centre), so on the whole sample it cost more
    than the iterations. Also `parts` seeded spare rows: where an emptied cell restarts, and the distance
    scale of the balancing offsets."""
    if len(x) < parts:
        raise DataError(f"k-means partition needs at least {parts} vectors to train on, got {len(x)}")
    rng = np.random.default_rng(seed)
    seed_rows = min(len(x), max(parts, SEED_ROWS_PER_CELL * parts))
    centroids = hnsw.kmeans_pp(x[np.sort(rng.choice(len(x), seed_rows, replace=False))], parts, rng)
    spares = x[rng.choice(len(x), min(len(x), parts), replace=False)]
    return centroids, np.ascontiguousarray(spares, np.float32)


def seed_from_samples(samples: Sequence[tuple[np.ndarray, np.ndarray]], parts: int, space: str, seed: int
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """seed_centroids on the holders' (ids, vectors) samples put in id order, so the seeds do not depend on how
    the sample is held (None: a single partition, or no sample)."""
    got = [s for s in samples if len(s[0])]
    if parts == 1 or not got:
        return None
    ids, sample = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
    return seed_centroids(hnsw.prepare(sample[np.argsort(ids, kind="stable")], space), parts, seed)


def in_id_order(pieces: Sequence[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
    """Row-aligned pieces (ids first, then per-row fields; non-empty) as one array per field in id order, each
    piece copied once straight to its rows (no concatenate-then-sort copy)."""
    ids = pieces[0][0] if len(pieces) == 1 else np.concatenate([p[0] for p in pieces])
    order = None if bool((np.diff(ids) > 0).all()) else np.argsort(ids, kind="stable")
    if len(pieces) == 1:
        return [f if order is None else f[order] for f in pieces[0]]
    dest = None
    if order is not None:
        dest = np.empty_like(order)
        dest[order] = np.arange(len(order))
    fields = []
    for field in range(len(pieces[0])):
        first = pieces[0][field]
        out = np.empty((len(ids), *first.shape[1:]), first.dtype)
        at = 0
        for p in pieces:
            part = p[field]
            out[slice(at, at + len(part)) if dest is None else dest[at:at + len(part)]] = part
            at += len(part)
        fields.append(out)
    return fields


TRAINING_STEPS = frozenset({"lloyd", "distances", "counts"})  # what fit_router asks of each slice


class TrainingSlice:
    """One holder's share of the k-means sample (an actor's, or all of it in one process): its rows' partial
    Lloyd sums, and the counts the balancing offsets are fitted on (its `fit` rows against the final
    centroids, their distances kept between rounds)."""

    def __init__(self, x: np.ndarray, fit: np.ndarray, threads: int = 1) -> None:
        self.x, self.fit, self.threads = x, fit, max(1, threads)
        self.d: np.ndarray | None = None

    def lloyd(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(per-cell sums in float64, per-cell counts) of my rows by their nearest centroid."""
        return lloyd_partial(self.x, centroids)

    def distances(self, centroids: np.ndarray) -> int:
        """Keep my fit rows' distances to the final centroids; how many rows."""
        self.d = hnsw.pairwise(self.x[self.fit], centroids, "l2")
        return len(self.d)

    def counts(self, offsets: np.ndarray, overlap: int) -> np.ndarray:
        """Memberships per cell of my fit rows' `overlap` nearest cells by distance + offsets."""
        assert self.d is not None, "distances() first"
        d, cells = self.d, self.d.shape[1]
        step = hnsw.ceil_div(len(d), self.threads) if len(d) > ASSIGN_ROWS else max(1, len(d))
        blocks = [d[s:s + step] for s in range(0, len(d), step)]
        if len(blocks) <= 1:
            return np.bincount(_top_cells(d, offsets, overlap).ravel(), minlength=cells)
        with ThreadPoolExecutor(len(blocks)) as pool:  # the kernel releases the GIL
            got = list(pool.map(lambda b: _top_cells(b, offsets, overlap), blocks))
        return np.bincount(np.concatenate(got).ravel(), minlength=cells)


def lloyd_partial(x: np.ndarray, centroids: np.ndarray, rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell sums (float64) and counts of `x`'s rows by their nearest centroid; blocks of `rows` rows keep
    each product in cache (a block's |x|² cannot change which centre is nearest)."""
    parts, dim = centroids.shape
    half = np.einsum("ij,ij->i", centroids, centroids)[None, :]
    labels = np.empty(len(x), np.int64)
    for start in range(0, len(x), rows):
        prod = x[start:start + rows] @ centroids.T
        labels[start:start + rows] = np.argmin(half - 2.0 * prod, axis=1)
    counts = np.bincount(labels, minlength=parts)
    sums = np.zeros((parts, dim), np.float64)
    filled = counts > 0
    if filled.any():
        order = np.argsort(labels, kind="stable")
        starts = (np.cumsum(counts) - counts)[filled]  # strictly increasing
        sums[filled] = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
    return sums, counts


def lloyd_combine(centroids: np.ndarray, partials: Sequence[tuple[np.ndarray, np.ndarray]], spares: np.ndarray
                  ) -> tuple[np.ndarray, float]:
    """The next centroids from every holder's partial sums (an emptied cell restarts on the next spare row);
    and the largest distance a centroid moved."""
    sums = np.sum([p[0] for p in partials], axis=0)
    counts = np.sum([p[1] for p in partials], axis=0)
    new = centroids.copy()
    filled = counts > 0
    new[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
    empty = np.flatnonzero(~filled)
    if len(empty):
        new[empty] = spares[np.arange(len(empty)) % len(spares)]
    return np.ascontiguousarray(new, np.float32), float(np.sqrt(((new - centroids) ** 2).sum(axis=1).max()))


def fit_router(centroids: np.ndarray, spares: np.ndarray, space: str, overlap: int, ask: Callable[..., list[Any]],
               balance: float = BALANCE, iters: int = KMEANS_ITERS) -> hnsw.Router:
    """Lloyd iterations then balancing offsets over a sample held in slices: `ask(method, *args)` calls that
    TrainingSlice method on every slice (in this process, or on the actors holding them) and returns their
    answers. Each Lloyd iteration combines the slices' partial sums; each offsets round their counts. The
    result does not depend on how the sample is sliced (up to float64 rounding of the centroid sums)."""
    for _ in range(iters):
        centroids, moved = lloyd_combine(centroids, ask("lloyd", centroids), spares)
        if moved == 0.0:  # a fixed point: the remaining iterations would change nothing
            break
    rows = sum(ask("distances", centroids))
    parts = len(centroids)
    o = min(overlap, parts)
    # one pass of argmin (overlap 1) balances to 1.5x; top-o memberships to `balance` x
    cap, rounds = (1.5, 200) if o <= 1 else (balance, 100)
    scale = float(np.median(hnsw.pairwise(spares, centroids, "l2"))) or 1.0
    offsets = np.zeros(parts, np.float64)
    mean, step = o * rows / parts, 0.05 * scale
    for _ in range(rounds):  # raise the price of over-full cells until each holds <= cap x the mean
        counts = np.sum(ask("counts", offsets, o), axis=0)
        if counts.max() <= cap * mean:
            break
        offsets += step * np.clip(counts / mean - 1.0, -1.0, None)
        offsets -= offsets.min()
        step *= 0.97
    return hnsw.Router(centroids, offsets.astype(np.float32), space)


@njit(nogil=True, cache=True)
def _top_cells(d, offsets, o):  # pragma: no cover - compiled
    """(n, o) cells of each row by d + offsets, nearest first (ties: lower cell). One thread: O(n·cells)
    cheap steps, where waking a thread team costs more than it saves."""
    n, s = d.shape
    out = np.empty((n, o), np.int64)
    best = np.empty(o)
    cell = np.empty(o, np.int64)
    for i in range(n):
        best[:] = np.inf
        cell[:] = -1
        for c in range(s):
            v = d[i, c] + offsets[c]
            if v < best[o - 1]:
                pos = o - 1
                while pos > 0 and best[pos - 1] > v:
                    best[pos] = best[pos - 1]
                    cell[pos] = cell[pos - 1]
                    pos -= 1
                best[pos] = v
                cell[pos] = c
        out[i] = cell
    return out


def assign(router: hnsw.Router, x: np.ndarray, overlap: int, threads: int = 1) -> np.ndarray:
    """(n, overlap) partitions of each vector, nearest first; blocks of rows on `threads` threads."""
    o = min(overlap, len(router.centroids))
    offsets = router.offsets.astype(np.float64)

    def block(start: int) -> np.ndarray:
        d = hnsw.pairwise(hnsw.prepare(x[start:start + ASSIGN_ROWS], router.space), router.centroids, "l2")
        return _top_cells(d, offsets, o)

    starts = range(0, len(x), ASSIGN_ROWS)
    if threads <= 1 or len(x) <= ASSIGN_ROWS:
        got = [block(s) for s in starts]
    else:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
            got = list(pool.map(block, starts))
    return np.concatenate(got) if got else np.empty((0, o), np.int64)


# ----------------------------------------------------------------------------- exact local graph


def sort_rows(ids: np.ndarray, dists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first k by (distance, id); non-finite distances are padding (-1 / inf)."""
    order = np.lexsort((ids, dists), axis=-1)[:, :k]
    ids, dists = np.take_along_axis(ids, order, 1), np.take_along_axis(dists, order, 1)
    ids[~np.isfinite(dists)] = hnsw.PAD_ID
    return ids, dists


@njit(inline="always", fastmath=FAST)
def _dist(x, i, j, l2):  # pragma: no cover - compiled
    """One pair's distance, accumulated in a fixed order: the same value whichever kernel asks."""
    s = np.float32(0.0)
    if l2:
        for u in range(x.shape[1]):
            diff = x[j, u] - x[i, u]
            s += diff * diff
        return s
    for u in range(x.shape[1]):
        s += x[i, u] * x[j, u]
    return np.float32(1.0) - s


@njit(inline="always")
def _insert(best_i, best_d, c, s):  # pragma: no cover - compiled
    """Put (s, c) into the row sorted by (distance, id) if it beats the last entry; True if it went in."""
    last = len(best_d) - 1
    if s > best_d[last] or (s == best_d[last] and best_i[last] >= 0 and c > best_i[last]):
        return False
    pos = last
    while pos > 0 and (best_d[pos - 1] > s or (best_d[pos - 1] == s and best_i[pos - 1] > c)):
        best_d[pos] = best_d[pos - 1]
        best_i[pos] = best_i[pos - 1]
        pos -= 1
    best_d[pos] = s
    best_i[pos] = c
    return True


@njit(inline="always", fastmath=FAST)
def _select_row(dist, r, x, ids, start, kk, l2, out_i, out_d):  # pragma: no cover - compiled
    """Row r of a block: the kk best by the BLAS distance (self among them), then the best k others by
    exact distance and (distance, id) into out_i[r] / out_d[r]."""
    me = start + r
    cand = np.full(kk, -1, np.int64)
    cand_d = np.full(kk, np.inf, np.float32)
    row = dist[r]
    worst = np.float32(np.inf)
    for j in range(dist.shape[1]):
        if row[j] < worst:
            _insert(cand, cand_d, j, row[j])
            worst = cand_d[kk - 1]
    for t in range(kk):
        j = cand[t]
        if j >= 0 and j != me:
            _insert(out_i[r], out_d[r], ids[j], _dist(x, me, j, l2))


@njit(parallel=True, cache=True, fastmath=FAST)
def _select_block(dist, x, ids, start, kk, k, l2):  # pragma: no cover - compiled
    """Rows start..start+len(dist) of the local graph, the rows spread over numba's threads."""
    b = dist.shape[0]
    out_i = np.full((b, k), -1, np.int64)
    out_d = np.full((b, k), np.inf, np.float32)
    for r in prange(b):
        _select_row(dist, r, x, ids, start, kk, l2, out_i, out_d)
    return out_i, out_d


@njit(nogil=True, cache=True, fastmath=FAST)
def _select_block_serial(dist, x, ids, start, kk, k, l2):  # pragma: no cover - compiled
    """As _select_block on the calling thread only, the GIL released (one partition per thread)."""
    b = dist.shape[0]
    out_i = np.full((b, k), -1, np.int64)
    out_d = np.full((b, k), np.inf, np.float32)
    for r in range(b):
        _select_row(dist, r, x, ids, start, kk, l2, out_i, out_d)
    return out_i, out_d


def local_graph(ids: np.ndarray, x: np.ndarray, k: int, space: str = "l2", block: int = BLOCK,
                parallel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest among `x` for each of its rows (self excluded) by blocked brute force.

    Each block of rows is one BLAS product against every row; the best k + RERANK_MARGIN candidates by
    that distance are re-ranked by exact pairwise distances and sorted by (distance, id).
    Memory: block × len(x) float32 beside x. `parallel=False`: the selection on the calling thread only
    (the caller runs partitions side by side, BLAS on one thread each).
    """
    x = hnsw.prepare(x, space)
    ids = np.asarray(ids, np.int64)
    n = len(x)
    if n < 2:
        return hnsw.empty_result(n, k)
    l2 = space == "l2"
    # one product gives |y|² − 2·x·y (l2) or −x·y: the rows' own |x|² cannot change their order
    left = np.hstack([x, np.ones((n, 1), np.float32)]) if l2 else x
    right = np.hstack([-2.0 * x, np.einsum("ij,ij->i", x, x)[:, None]]).T.copy() if l2 else -x.T
    kk = min(k + RERANK_MARGIN, n - 1) + 1  # + self
    out_i, out_d = hnsw.empty_result(n, k)
    select = _select_block if parallel else _select_block_serial
    for start in range(0, n, block):
        stop = min(n, start + block)
        out_i[start:stop], out_d[start:stop] = select(left[start:stop] @ right, x, ids, start, kk, k, l2)
    return out_i, out_d


# ----------------------------------------------------------------------------- merge and refinement


def merge(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the exact top-k of the union of its candidate lists (duplicates dropped, by (distance, id))."""
    return hnsw.merge_results(parts, k)


@njit(parallel=True, cache=True, fastmath=FAST)
def _refine_round(x, nbrs, dists, l2, rows):  # pragma: no cover - compiled
    """One neighbours-of-neighbours round for rows `rows`; (new lists, new distances, entries changed)."""
    k = nbrs.shape[1]
    new_n = nbrs.copy()
    new_d = dists.copy()
    changed = np.zeros(len(rows), np.int64)
    for t in prange(len(rows)):
        i = rows[t]
        for a in range(k):
            j = nbrs[i, a]
            if j < 0:
                continue
            for b in range(k):
                c = nbrs[j, b]
                if c < 0 or c == i:
                    continue
                dup = False
                for u in range(k):
                    if new_n[i, u] == c:
                        dup = True
                        break
                if not dup and _insert(new_n[i], new_d[i], c, _dist(x, i, c, l2)):
                    changed[t] += 1
    return new_n, new_d, changed.sum()


def refine(x: np.ndarray, nbrs: np.ndarray, dists: np.ndarray, rounds: int, space: str = "l2",
           min_update_rate: float = REFINE_MIN_RATE, rows: np.ndarray | None = None, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Neighbours-of-neighbours rounds over `rows` (default all; nbrs hold row numbers): each point tries its
    neighbours' neighbours. A round runs only while it pays: it is first tried on a seeded sample of the
    rows, and when under `min_update_rate` of the sample's entries would change, refinement stops there
    (the graph is left as it was). Returns the graph and the update rate of each round tried (the sample's
    for the one that stopped it)."""
    x = hnsw.prepare(x, space)
    rows = np.arange(len(nbrs)) if rows is None else np.asarray(rows, np.int64)
    l2 = space == "l2"
    probe = max(PROBE_ROWS, len(rows) // 50)
    rates: list[float] = []
    for _ in range(rounds):
        if len(rows) > probe:
            sample = np.sort(np.random.default_rng(seed + len(rates)).choice(rows, probe, replace=False))
            rate = float(_refine_round(x, nbrs, dists, l2, sample)[2]) / max(1, probe * nbrs.shape[1])
            if rate < min_update_rate:
                rates.append(rate)
                break
        nbrs, dists, changed = _refine_round(x, nbrs, dists, l2, rows)
        rates.append(float(changed) / max(1, len(rows) * nbrs.shape[1]))
        if rates[-1] < min_update_rate:
            break
    return nbrs, dists, rates


# ----------------------------------------------------------------------------- the steps an actor runs


@njit(nogil=True, cache=True)
def _merge_rows(best_i, best_d, rows, nb, d):  # pragma: no cover - compiled
    """Fold one partition's local rows (sorted by (distance, id)) into the running top-k of rows `rows`."""
    k = best_i.shape[1]
    for t in range(len(rows)):
        bi, bd = best_i[rows[t]], best_d[rows[t]]
        for a in range(nb.shape[1]):
            c, s = nb[t, a], d[t, a]
            if c < 0 or s > bd[k - 1]:
                break  # padding or worse than the k-th: so is the rest of the sorted row
            dup = False
            for u in range(k):
                if bi[u] == c:
                    dup = True
                    break
            if not dup:
                _insert(bi, bd, c, s)


def partition_rows_of(member: np.ndarray, owned: Sequence[int]) -> dict[int, np.ndarray]:
    """Rows (ascending) of each owned partition, from one sort of the (n, overlap) membership (-1: not mine)."""
    flat = member.ravel()
    order = np.argsort(flat, kind="stable")
    keys = flat[order]
    rows = order // member.shape[1]
    out = {}
    for p in owned:
        lo, hi = np.searchsorted(keys, p, "left"), np.searchsorted(keys, p, "right")
        out[p] = rows[lo:hi]
    return out


def local_candidates(ids: np.ndarray, x: np.ndarray, member: np.ndarray, owned: Sequence[int], k: int,
                     space: str = "l2", block: int = BLOCK, partitions: int | None = None, threads: int = 1
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) ids / distances of every held row: the exact top-k of the union of the local graphs of the
    `owned` partitions it belongs to (padding for rows in none of them).

    `threads` partitions are built side by side, each on one thread (BLAS on one thread, the selection with
    the GIL released): no thread waits on another inside a partition's product. Their rows are folded into
    the running top-k on the calling thread, in any order: the top-k by (distance, id) of a union does not
    depend on it. Progress: partitions done (of `partitions`, all holders' together; default `len(owned)`)."""

    from threadpoolctl import threadpool_limits

    best_i, best_d = hnsw.empty_result(len(ids), k)
    rows_of = partition_rows_of(member, owned)
    tracker = progress.Tracker("local graphs", partitions or len(owned), "partitions", "rows")

    def one(p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sel = rows_of[p]
        if len(sel) < 2:
            return sel, *hnsw.empty_result(len(sel), k)
        return sel, *local_graph(ids[sel], x[sel], k, space, block, parallel=threads == 1)

    def fold(sel: np.ndarray, nb: np.ndarray, d: np.ndarray) -> None:
        _merge_rows(best_i, best_d, sel, nb, d)
        tracker.advance(1, len(sel))

    if threads <= 1 or len(owned) <= 1:
        for p in owned:
            fold(*one(p))
        return best_i, best_d
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        pending = list(owned)[::-1]
        running = [pool.submit(one, pending.pop()) for _ in range(min(2 * threads, len(pending)))]
        while running:  # at most 2·threads partitions' products and results alive at once
            fold(*running.pop(0).result())
            if pending:
                running.append(pool.submit(one, pending.pop()))
    return best_i, best_d


def merge_pieces(home_ids: np.ndarray, pieces: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The graph rows of `home_ids` (sorted): per point, the exact top-k of the union of the candidate rows
    (ids, cand_ids, cand_dists; each row sorted by (distance, id)) every holder sent for it, folded in one
    after another (_merge_rows: no concatenated copy of every holder's lists)."""
    given = [p for p in pieces if len(p[0])]
    # a holder with every home point (the home actor itself): its lists are already each point's top-k so far
    whole = next((j for j, p in enumerate(given) if np.array_equal(p[0], home_ids)), None)
    if whole is not None and len(given) == 1:
        return given[0][1], given[0][2]
    if whole is None:
        best_i, best_d = hnsw.empty_result(len(home_ids), k)
    else:
        best_i, best_d = given.pop(whole)[1:]
        best_i, best_d = np.array(best_i, np.int64), np.array(best_d, np.float32)  # folded into in place
    for ids, ci, cd in given:
        _merge_rows(best_i, best_d, np.searchsorted(home_ids, ids), ci, cd)
    return best_i, best_d


def refine_home(home_ids: np.ndarray, nbrs: np.ndarray, dists: np.ndarray, store_ids: np.ndarray,
                store_x: np.ndarray, rounds: int, space: str = "l2", min_update_rate: float = REFINE_MIN_RATE,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Refine the graph rows of `home_ids` with the vectors this actor holds (`store_ids` sorted, unique):
    neighbours-of-neighbours among held points whose lists are known here; neighbours held elsewhere stay
    in the list (never expanded). Rates: per round tried, the share of the home rows' entries changed."""
    if rounds == 0 or len(home_ids) == 0:
        return nbrs, dists, []
    n = len(store_ids)
    home_rows = np.searchsorted(store_ids, home_ids)
    k = nbrs.shape[1]
    code, decode = _code_ids(store_ids, nbrs)
    graph_n = np.full((n, k), hnsw.PAD_ID, np.int64)
    graph_d = np.full((n, k), np.inf, np.float32)
    graph_n[home_rows], graph_d[home_rows] = code, dists
    coded = graph_n
    graph_n, graph_d, rates = refine(store_x, graph_n, graph_d, rounds, space, min_update_rate, home_rows, seed)
    if graph_n is coded:  # no round ran (its probe said it would change too little): the lists as they came
        return nbrs, dists, rates
    got, d = graph_n[home_rows], graph_d[home_rows]
    real, d = sort_rows(decode(got), d, k)
    return real, d, rates


def _code_ids(store_ids: np.ndarray, nbrs: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Neighbour ids as refine's codes: the row of a held point (`store_ids` sorted, unique), -2 - (rank) for one
    held elsewhere (a larger id, a smaller code), PAD_ID for padding; and the decoder. Ids spanning no more
    than twice the entries: one table lookup each (the rank is the id's offset); else binary searches."""
    n, valid = len(store_ids), nbrs >= 0
    lo = int(min(store_ids[0], nbrs[valid].min())) if valid.any() else int(store_ids[0])
    span = int(max(store_ids[-1], nbrs.max())) - lo + 1
    if span <= 2 * nbrs.size and n < 2**31:
        row = np.full(span, -1, np.int32)
        row[store_ids - lo] = np.arange(n, dtype=np.int32)
        off = np.where(valid, nbrs - lo, 0)
        pos = row[off].astype(np.int64)
        code = np.where(valid, np.where(pos >= 0, pos, -2 - off), hnsw.PAD_ID)
        return code, lambda got: np.where(got >= 0, store_ids[np.maximum(got, 0)],
                                          np.where(got <= -2, lo + (-2 - got), hnsw.PAD_ID))
    pos = np.minimum(np.searchsorted(store_ids, nbrs), n - 1)
    held = (store_ids[pos] == nbrs) & valid
    outside = np.unique(nbrs[~held & valid])
    code = np.where(held, pos, np.where(valid, -2 - np.searchsorted(outside, nbrs), hnsw.PAD_ID))
    return code, lambda got: np.where(got >= 0, store_ids[np.maximum(got, 0)],
                                      np.where(got <= -2, outside[np.maximum(-2 - got, 0)] if len(outside) else hnsw.PAD_ID,
                                               hnsw.PAD_ID))


# ----------------------------------------------------------------------------- one process, end to end


def build_graph(ids: np.ndarray, x: np.ndarray, k: int, settings: GraphSettings, space: str = "l2", threads: int = 1
                ) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """The partition method in one process, the same steps the actors run (tests, small data, the plan's sample)."""
    order = np.argsort(ids, kind="stable")
    ids, x = np.asarray(ids, np.int64)[order], np.ascontiguousarray(x, np.float32)[order]
    n = len(x)
    check_k(k, n)
    parts = partitions_for(n, settings)
    if parts == 1:
        member = np.zeros((n, 1), np.int64)
    else:
        router = train_partitions(x[training_rows(n, parts, settings.seed)], parts, space, settings.seed, settings.overlap)
        member = assign(router, x, settings.overlap)
    nb, d = local_candidates(ids, x, member, range(parts), k, space, settings.block, threads=threads)
    nb, d, rates = refine_home(ids, nb, d, ids, x, settings.refine_rounds if parts > 1 else 0, space,
                               settings.refine_min_rate, settings.seed)
    back = np.empty_like(order)
    back[order] = np.arange(n)
    return nb[back], d[back], {"partitions": parts, "refine_rates": rates}


def warm_kernels(threads: int, method: str = "partition") -> None:
    """Load (or compile) the numba kernels `method` runs on a tiny graph, with the types a real one uses: an actor
    runs it while it reads its rows, so the first partition does not wait for it (and `exact` compiles no more)."""
    x = np.random.default_rng(0).normal(size=(96, 4)).astype(np.float32)
    settings = GraphSettings(method=method, partition_rows=32, overlap=2, refine_rounds=1, refine_min_rate=0.0)
    build_graph(np.arange(96), x, 3, settings, threads=threads)


def training_rows(rows: int, parts: int, seed: int) -> np.ndarray:
    """Row numbers k-means trains on (seeded, sorted)."""
    return np.sort(np.random.default_rng(seed).choice(rows, sample_rows(rows, parts), replace=False))
