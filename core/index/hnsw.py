"""Pure logic behind the sharded HNSW index: validation, merging, partitioning, exact search, manifests.

Distances follow hnswlib's conventions so exact and approximate results merge on one scale:
  l2      squared Euclidean distance
  ip      1 - <q, x>
  cosine  1 - <q/|q|, x/|x|>
Results are (q, k) arrays: ids int64 (-1 for padding) and distances float32 (+inf for padding),
each row sorted by (distance, id). No Ray here: workers/hnsw_actor.py and workers/sharded_index.py distribute these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shardwalk.core.data.builtin import hash_unit
from shardwalk.core.errors import ConfigError, CorruptArtifactError, DataError
from shardwalk.core.storage.files import (
    MANIFEST,
    check_checksums,
    read_json,
    read_manifest,
    sha256_file,
    verify_dir,
)

SPACES = ("l2", "ip", "cosine")
PARTITIONS = ("hash", "kmeans")
FORMAT = "shardwalk-hnsw/1"
PAD_ID = -1
HASH_SEED = 0x5EED  # fixed forever: changing it would re-route ids of existing indexes
# The build parameters' defaults, written here only (core/index/spec.py, the pipeline and the API read them).
DEFAULT_SPACE = "l2"
DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_RANDOM_SEED = 100


# ----------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class HnswParams:
    """Build parameters of every shard (recorded in each manifest)."""

    dim: int
    space: str = DEFAULT_SPACE
    M: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    random_seed: int = DEFAULT_RANDOM_SEED


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def validate_params(
    *, dim: int, space: str = DEFAULT_SPACE, M: int = DEFAULT_M, ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    random_seed: int = DEFAULT_RANDOM_SEED,
) -> HnswParams:
    """Check build parameters once, before any actor starts."""
    if space not in SPACES:
        raise ConfigError(f"unknown space '{space}'; choose from {list(SPACES)}")
    _positive_int("dim", dim)
    _positive_int("M", M, 2)
    _positive_int("ef_construction", ef_construction)
    if isinstance(random_seed, bool) or not isinstance(random_seed, int | np.integer) or random_seed < 0:
        raise ConfigError(f"random_seed must be a non-negative integer, got {random_seed!r}")
    return HnswParams(int(dim), space, int(M), int(ef_construction), int(random_seed))


def validate_layout(*, shards: int, replicas: int = 1, partition: str = "hash") -> None:
    """Check the distribution parameters of a build."""
    _positive_int("shards", shards)
    _positive_int("replicas", replicas)
    if partition not in PARTITIONS:
        raise ConfigError(f"unknown partition '{partition}'; choose from {list(PARTITIONS)}")


def validate_search(k: Any, ef: Any, live: int, nprobe: Any = None, shards: int = 1) -> tuple[int, int, int]:
    """(k, ef, nprobe) checked against the index: k in [1, live], ef >= 1, nprobe in [1, shards]."""
    k = _positive_int("k", k)
    if k > live:
        raise ConfigError(f"k={k} is larger than the index ({live} live vectors)")
    ef = _positive_int("ef", ef)
    nprobe = shards if nprobe is None else _positive_int("nprobe", nprobe)
    if nprobe > shards:
        raise ConfigError(f"nprobe={nprobe} exceeds the number of shards ({shards})")
    return k, ef, nprobe


def validate_queries(queries: Any, dim: int, where: str = "queries") -> np.ndarray:
    """A finite float32 (q, dim) array, or DataError naming the problem and the first bad row."""
    arr = np.asarray(queries)
    if arr.ndim == 1 and arr.size == dim:
        arr = arr.reshape(1, dim)
    if arr.ndim != 2:
        raise DataError(f"{where}: expected a 2-D array (q, {dim}), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{where}: no queries (0 rows)")
    if arr.shape[1] != dim:
        raise DataError(f"{where}: dimension {arr.shape[1]} differs from the index dimension {dim}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{where}: must be numeric, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        raise DataError(f"{where}: NaN or inf at row {int(np.flatnonzero(~finite)[0])}")
    return out


# ----------------------------------------------------------------------------- merging


def empty_result(q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All-padding result arrays."""
    return np.full((q, k), PAD_ID, np.int64), np.full((q, k), np.inf, np.float32)


def merge_results(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (ids, dists) rows by (distance, id), drop duplicate ids, pad with -1/+inf.

    Entries with a non-finite distance are padding whatever their id. Duplicates (the same id from two
    replicas or shards) keep their smallest distance.
    """
    if not parts:
        raise ValueError("merge_results needs at least one part")
    q = parts[0][0].shape[0]
    ids = np.concatenate([np.asarray(p[0], np.int64).reshape(q, -1) for p in parts], axis=1)
    dists = np.concatenate([np.asarray(p[1], np.float32).reshape(q, -1) for p in parts], axis=1)
    dists = np.where(np.isfinite(dists), dists, np.float32(np.inf))
    if ids.shape[1] == 0:
        return empty_result(q, k)
    # 1) by (id, distance): a duplicate is an entry whose id equals its left neighbour's.
    order = np.lexsort((dists, ids), axis=-1)
    ids = np.take_along_axis(ids, order, axis=1)
    dists = np.take_along_axis(dists, order, axis=1)
    dup = np.zeros_like(ids, dtype=bool)
    dup[:, 1:] = ids[:, 1:] == ids[:, :-1]
    dists[dup] = np.inf
    # 2) by (distance, id): padding (inf) sinks to the end.
    order = np.lexsort((ids, dists), axis=-1)[:, :k]
    ids = np.take_along_axis(ids, order, axis=1)
    dists = np.take_along_axis(dists, order, axis=1)
    ids[~np.isfinite(dists)] = PAD_ID
    if ids.shape[1] < k:
        pad_ids, pad_d = empty_result(q, k - ids.shape[1])
        ids, dists = np.hstack([ids, pad_ids]), np.hstack([dists, pad_d])
    return ids, dists.astype(np.float32, copy=False)


def drop_self(query_ids: np.ndarray, ids: np.ndarray, dists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (asked for k+1 neighbours), keeping the k nearest others."""
    keep = ids != query_ids[:, None]
    # rows where self was not found lose their last (farthest) entry instead
    missing = keep.all(axis=1)
    keep[missing, -1] = False
    cols = ids.shape[1] - 1
    out_ids = ids[keep].reshape(-1, cols)[:, :k]
    out_d = dists[keep].reshape(-1, cols)[:, :k]
    return out_ids, out_d


# ----------------------------------------------------------------------------- distances / exact search


def prepare(x: np.ndarray, space: str) -> np.ndarray:
    """Vectors as hnswlib stores them: unit-normalised for cosine, unchanged otherwise."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if space != "cosine":
        return x
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-30))


def pairwise(q: np.ndarray, x: np.ndarray, space: str, x_sq: np.ndarray | None = None) -> np.ndarray:
    """Distance matrix (len(q), len(x)) in hnswlib's convention; inputs already `prepare`d."""
    dot = q @ x.T
    if space == "l2":
        xs = (x * x).sum(axis=1) if x_sq is None else x_sq
        d = (q * q).sum(axis=1)[:, None] + xs[None, :] - 2.0 * dot
        return np.maximum(d, 0.0, out=d)
    return 1.0 - dot


def exact_search(
    queries: np.ndarray,
    data: np.ndarray,
    data_ids: np.ndarray,
    k: int,
    space: str,
    *,
    query_block: int = 512,
    data_block: int = 32768,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force k nearest (blocked so memory stays ~query_block x data_block floats)."""
    q = prepare(queries, space)
    x = prepare(data, space)
    data_ids = np.asarray(data_ids, np.int64)
    out_ids, out_d = empty_result(len(q), k)
    if len(x) == 0:
        return out_ids, out_d
    x_sq = (x * x).sum(axis=1) if space == "l2" else None
    for qs in range(0, len(q), query_block):
        qb = q[qs : qs + query_block]
        best = empty_result(len(qb), k)
        for xs in range(0, len(x), data_block):
            d = pairwise(qb, x[xs : xs + data_block], space, None if x_sq is None else x_sq[xs : xs + data_block])
            kk = min(k, d.shape[1])
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk] if kk < d.shape[1] else np.argsort(d, axis=1)
            cand = (data_ids[xs : xs + data_block][part], np.take_along_axis(d, part, axis=1))
            best = merge_results([best, cand], k)
        out_ids[qs : qs + query_block], out_d[qs : qs + query_block] = best
    return out_ids, out_d


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (padding in truth ignored)."""
    found, truth = np.asarray(found), np.asarray(truth)
    hits, total = 0, 0
    for f, t in zip(found, truth):
        t = t[t != PAD_ID]
        hits += np.intersect1d(f[f != PAD_ID], t).size
        total += t.size
    return float(hits / total) if total else 1.0


# ----------------------------------------------------------------------------- partitioning


def hash_shard(ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard of each id under hash partitioning: stable for an id forever (adds/deletes route by it)."""
    return np.minimum((hash_unit(ids, HASH_SEED) * shards).astype(np.int64), shards - 1)


def kmeans_pp(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007)."""
    x_sq = np.einsum("ij,ij->i", x, x)  # once: each new centre's distances are one matrix-vector product
    centers = [x[rng.integers(len(x))]]
    d = pairwise(centers[0][None, :], x, "l2", x_sq)[0]
    for _ in range(1, n):
        total = d.sum()
        idx = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=d / total)
        centers.append(x[idx])
        d = np.minimum(d, pairwise(x[idx][None, :], x, "l2", x_sq)[0])
    return np.stack(centers).astype(np.float32)


@dataclass
class Router:
    """Centroids plus per-centroid offsets: a vector's shard is argmin ||x - c_j||² + offset_j.

    The offsets are "prices" fitted on the training sample so that cells stay balanced (every shard
    within 2x of the mean size); queries are routed with the same biased distance so a query lands
    where its neighbours were put.
    """

    centroids: np.ndarray
    offsets: np.ndarray
    space: str

    def scores(self, x: np.ndarray) -> np.ndarray:
        return pairwise(prepare(x, self.space), self.centroids, "l2") + self.offsets[None, :]

    def assign(self, x: np.ndarray) -> np.ndarray:
        """The shard of each vector."""
        return np.argmin(self.scores(x), axis=1).astype(np.int64)

    def probe(self, x: np.ndarray, nprobe: int) -> np.ndarray:
        """(q, nprobe) shards to ask for each query, nearest first."""
        s = self.scores(x)
        if nprobe >= s.shape[1]:
            return np.argsort(s, axis=1)
        part = np.argpartition(s, nprobe - 1, axis=1)[:, :nprobe]
        order = np.argsort(np.take_along_axis(s, part, axis=1), axis=1)
        return np.take_along_axis(part, order, axis=1)

    def to_json(self) -> dict[str, Any]:
        return {"centroids": self.centroids.tolist(), "offsets": self.offsets.tolist(), "space": self.space}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Router:
        return cls(
            np.asarray(payload["centroids"], np.float32), np.asarray(payload["offsets"], np.float32), payload["space"]
        )


def train_router(
    sample: np.ndarray, shards: int, space: str, *, iters: int = 25, seed: int = 0, balance: float = 1.5
) -> Router:
    """k-means (Lloyd) on a sample, then offsets so no cell exceeds `balance` x the mean on the sample.

    `balance` = 1.5 on the sample leaves headroom for sampling noise under the 2x target on full data.
    """
    x = prepare(sample, space)
    if len(x) < shards:
        raise DataError(f"k-means partition needs at least {shards} vectors to train on, got {len(x)}")
    rng = np.random.default_rng(seed)
    centroids = kmeans_pp(x, shards, rng)
    for _ in range(iters):
        labels = np.argmin(pairwise(x, centroids, "l2"), axis=1)
        for c in range(shards):
            members = x[labels == c]
            centroids[c] = members.mean(axis=0) if len(members) else x[rng.integers(len(x))]
    offsets = balance_offsets(pairwise(x, centroids, "l2"), balance)
    return Router(centroids.astype(np.float32), offsets, space)


def balance_offsets(d: np.ndarray, balance: float, rounds: int = 200) -> np.ndarray:
    """Raise the price of over-full cells until every cell holds <= balance x the mean (sample)."""
    n, s = d.shape
    cap = balance * n / s
    offsets = np.zeros(s, np.float64)
    scale = float(np.median(d)) or 1.0
    step = 0.05 * scale
    for _ in range(rounds):
        counts = np.bincount(np.argmin(d + offsets, axis=1), minlength=s)
        if counts.max() <= cap:
            break
        offsets += step * np.clip(counts / (n / s) - 1.0, -1.0, None)
        offsets -= offsets.min()
        step *= 0.97
    return offsets.astype(np.float32)


def shard_sizes_ok(sizes: Sequence[int], factor: float = 2.0) -> bool:
    """Whether every shard holds at most `factor` x the mean size."""
    sizes = np.asarray(sizes, np.float64)
    return bool(sizes.size == 0 or sizes.max() <= factor * sizes.mean())


# ----------------------------------------------------------------------------- manifests


def shard_file(shard: int) -> str:
    return f"shard-{shard:05d}.bin"


def shard_manifest_file(shard: int) -> str:
    return f"shard-{shard:05d}.json"


def deleted_file(shard: int) -> str:
    return f"shard-{shard:05d}.deleted.parquet"


def build_shard_manifest(
    directory: Path, shard: int, params: HnswParams, *, count: int, live_ids: np.ndarray, deleted: int
) -> dict[str, Any]:
    """The JSON manifest of one shard: dim, space, params, counts, id range and file checksums."""
    files = {shard_file(shard): sha256_file(directory / shard_file(shard))}
    if (directory / deleted_file(shard)).is_file():
        files[deleted_file(shard)] = sha256_file(directory / deleted_file(shard))
    return {
        "format": FORMAT,
        "shard": shard,
        "params": asdict(params),
        "count": int(count),
        "live": int(live_ids.size),
        "deleted": int(deleted),
        "id_min": int(live_ids.min()) if live_ids.size else None,
        "id_max": int(live_ids.max()) if live_ids.size else None,
        "files": files,
    }


def load_shard_manifest(directory: Path, shard: int) -> tuple[dict[str, Any], HnswParams]:
    """Read one shard's manifest and verify every file it lists against its sha256."""
    path = directory / shard_manifest_file(shard)
    manifest = read_json(path, CorruptArtifactError(f"{path}: shard manifest is missing"), "shard manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("shard") != shard:
        raise CorruptArtifactError(f"{path}: not a manifest of shard {shard} in format {FORMAT}")
    if not isinstance(manifest.get("files"), dict):
        raise CorruptArtifactError(f"{path}: shard manifest has no 'files' table")
    check_checksums(directory, manifest["files"], "shard manifest")
    try:
        params = HnswParams(**manifest["params"])
    except (KeyError, TypeError) as exc:
        raise CorruptArtifactError(f"{path}: bad params ({exc})") from None
    return manifest, params


INDEX_FILE = "index.json"


def read_index_manifest(directory: Path) -> dict[str, Any]:
    """The top-level manifest of an index directory, or a typed error if it is not an index."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory, so not an index")
    path = directory / INDEX_FILE
    manifest = read_json(path, DataError(f"{directory}: not a shardwalk index (no {INDEX_FILE})"), "index manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a shardwalk index manifest (format {FORMAT} expected)")
    for key in ("dim", "space", "shards", "partition", "params"):
        if key not in manifest:
            raise CorruptArtifactError(f"{path}: missing key '{key}'")
    if not (directory / MANIFEST).is_file():
        raise CorruptArtifactError(f"{directory}: index is not committed (no {MANIFEST} marker); save it again")
    # Its JSON manifests must match their checksums (each shard verifies its own files when it loads).
    listed = read_manifest(directory)["files"]
    verify_dir(directory, names=[rel for rel in listed if rel.endswith(".json")])
    return manifest


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


ROUTE_CHUNK_MIN_ROWS = 4096  # rows of its part a reader routes per call, at least
ROUTE_MAX_CHUNKS = 256


def route_chunks(rows: int) -> int:
    """In how many chunks a reader routes its `rows` during a build.

    Two chunks are in flight at once, so the routed copies alive stay near 2/chunks of the data; the
    floor on rows per chunk keeps per-call overhead small next to the hnswlib inserts it feeds.
    """
    return max(1, min(ROUTE_MAX_CHUNKS, ceil_div(rows, ROUTE_CHUNK_MIN_ROWS)))


def batches(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges covering n in blocks of `size`."""
    return [(s, min(n, s + size)) for s in range(0, n, max(1, size))] or []


SEARCH_BATCH_MAX = 65_536  # query rows per shard call at most when the caller leaves the batch size to the index


def search_batch(queries: int, replicas: int, batch_size: int | None = None) -> int:
    """Query rows per shard call: `batch_size`, else one batch per replica (at most SEARCH_BATCH_MAX rows).

    A replica answers its calls one after another, each with all its hnswlib threads, so splitting a search
    finer than the replicas only adds a Ray round trip (~3 ms) and a merge per extra batch.
    """
    if batch_size is not None:
        return batch_size
    return max(1, min(SEARCH_BATCH_MAX, ceil_div(queries, max(replicas, 1))))


def threads_for(cpus: float) -> int:
    """hnswlib threads for an actor given `cpus` CPUs (at least one)."""
    return max(1, math.floor(cpus + 1e-9))
