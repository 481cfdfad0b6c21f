"""Sharded HNSW on Ray actors: `HnswShard` owns one hnswlib index; `ShardedIndex` is the user's handle.

Data flow (the driver moves only ObjectRefs, paths and small summaries):
  1. each primary actor reads *its own* rows of the source (core.io.read_shard) and validates them;
  2. it picks each row's target shard (hash of id, or nearest k-means centroid), then routes its rows
     chunk by chunk: the pieces of a chunk are call results, inserted by their target primaries while the
     next chunk is routed, so only about two chunks of routed copies exist at any time;
  3. each primary then checks its ids are unique and persists its hnswlib index
     (native hnswlib file + JSON manifest with sha256) in the index's working directory;
  4. replicas load that file; a restarted actor (`max_restarts`) reloads it from there as well.
Actor methods run one at a time (no concurrency groups), so `set_ef` + `knn_query` inside one call
never races with another request.

The working directory must be visible to every node (a shared file system) on a multi-node cluster:
replicas and restarted actors reload from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import resource
import shutil
import tempfile
import time
import uuid
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import pyarrow as pa
import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from core import datasets, hnsw, index_store, sink, sizing, store
from core.errors import ConfigError, CorruptArtifactError, DataError, ShardUnavailableError
from core.io import (
    MANIFEST,
    Source,
    build_manifest,
    confined,
    in_memory_table,
    owned_prefix,
    plan_shards,
    read_shard,
    remove_orphaned_temporaries,
    write_json_atomic,
    write_parquet,
)
from core.schema import KNN_GRAPH_SCHEMA, check_unique, from_numpy, to_numpy, validate_vectors, vector_dim
from workers import knn_graph as graph_units
from workers import query_stream
from workers.autoconnect import ensure_ray
from workers.cluster import cluster_nodes
from workers.datasets import is_ray_dataset, staged_dataset

EXACT_THRESHOLD = 20_000  # allowed ids in a shard at or below which filtered search is brute force
READY_TIMEOUT_S = 300.0
BUILD_RESTARTS = 2  # fresh builds after a primary dies mid-build

log = logging.getLogger("shardwalk")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reconstructed() -> bool:
    """Whether Ray restarted this actor (its internals warn about a deprecated accessor: silence that)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _u64(ids: np.ndarray) -> np.ndarray:
    """hnswlib labels are size_t: reinterpret int64 ids bit for bit (negative ids survive the trip)."""
    return np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64)


def _replace_file(src_tmp: Path, final: Path) -> None:
    os.replace(src_tmp, final)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible (files are only ever replaced, never rewritten in place)."""
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


RESTART_RETRIES = 2  # extra attempts per call after an actor death (search is read-only, so retrying is safe)


def _targets(ids: np.ndarray, vecs: np.ndarray, shards: int, router: dict[str, Any] | None) -> np.ndarray:
    """The shard each row goes to: the hash of its id, or its nearest k-means centroid."""
    return hnsw.hash_shard(ids, shards) if router is None else hnsw.Router.from_json(router).assign(vecs)


@ray.remote(max_restarts=3, max_task_retries=0)
class HnswShard:
    """One replica of one shard: load my part, call core / hnswlib, persist."""

    def __init__(self, shard: int, replica: int, workdir: str, cpus: float, load: bool = False) -> None:
        self.shard, self.replica = shard, replica
        self.workdir = Path(workdir)
        self.threads = hnsw.threads_for(cpus)
        # pyarrow's ChunkedArray.to_numpy imports pandas lazily (~35 MB of code): import it before the
        # memory baseline so per-vector figures measure data, not library code.
        import pandas  # noqa: F401

        self.rss0 = _rss_bytes()
        self.index: hnswlib.Index | None = None
        self.params: hnsw.HnswParams | None = None
        self.live = np.empty(0, np.int64)  # sorted live ids
        self.deleted = np.empty(0, np.int64)  # sorted deleted ids (still in the hnswlib graph)
        self.staged: tuple[np.ndarray, np.ndarray] | None = None
        self.local_piece: tuple[np.ndarray, np.ndarray] | None = None
        self.targets: np.ndarray | None = None  # target shard of each staged row (assign)
        self.route_shards = 0
        self.built_ids: list[np.ndarray] = []
        self.build_seconds = 0.0
        self.reconstructed = _reconstructed()
        # Restarted before its shard was ever persisted (killed mid-build), it has nothing to reload: it
        # stays empty, and ShardedIndex._build_restarting replaces it.
        persisted = (self.workdir / hnsw.shard_manifest_file(shard)).is_file()
        if load or (self.reconstructed and persisted):
            self._load_workdir()

    # ------------------------------------------------------------------ reading and routing

    def read_part(self, spec: Any, sample: int, seed: int, where: str, dim: int | None, trusted: bool) -> dict[str, Any]:
        """Read (and unless `trusted`, validate) my rows; keep them staged; return a small sample for k-means.

        `trusted` = validated upstream (in the driver for in-memory data, or by the ingest stage):
        docs/design.md validates once at the edge, and re-validating would cost copies of the data.
        """
        if spec.num_rows == 0:
            self.staged = (np.empty(0, np.int64), np.empty((0, dim or 0), np.float32))
            return {"rows": 0, "dim": dim, "start": spec.start, "sample": None}
        if trusted:
            table = read_shard(spec, ["id", "vector"])
            if dim is not None and vector_dim(table) != dim:
                raise DataError(f"{where}: column 'vector' has dimension {vector_dim(table)}, expected {dim}")
        else:
            table = validate_vectors(read_shard(spec), where=where, row_offset=spec.start, dim=dim)
        ids, vecs = to_numpy(table)
        self.staged = (ids, vecs)  # views of the Arrow buffers: no copy
        rng = np.random.default_rng([seed, spec.index])
        pick = rng.choice(len(ids), size=min(sample, len(ids)), replace=False) if sample else np.empty(0, np.int64)
        return {"rows": len(ids), "dim": vecs.shape[1], "start": spec.start, "sample": vecs[np.sort(pick)]}

    def route(self, shards: int, router: dict[str, Any] | None) -> tuple[list[Any], list[Any]]:
        """Split all my staged rows by target shard; return refs (data by shard, ids by hash bucket)."""
        assert self.staged is not None, "read_part first"
        ids, vecs = self.staged
        self.staged = None
        target = _targets(ids, vecs, shards, router)
        bucket = hnsw.hash_shard(ids, shards)
        data = [ray.put((ids, vecs) if (mask := target == j).all() else (ids[mask], vecs[mask])) for j in range(shards)]
        return data, [ray.put(ids[bucket == j]) for j in range(shards)]

    def assign(self, shards: int, router: dict[str, Any] | None) -> tuple[list[int], list[Any]]:
        """Choose (and keep) the target shard of each staged row; return rows per target and ids by hash bucket.

        The id buckets are only needed (and only made) with a router: hash routing already sends every
        copy of an id to one shard, which checks them itself.
        """
        assert self.staged is not None, "read_part first"
        ids, vecs = self.staged
        self.targets = _targets(ids, vecs, shards, router)
        self.route_shards = shards
        counts = np.bincount(self.targets, minlength=shards).tolist()
        if router is None:
            return counts, []
        bucket = hnsw.hash_shard(ids, shards)
        return counts, [ray.put(ids[bucket == j]) for j in range(shards)]

    def route_chunk(self, chunk: int, chunks: int) -> Any:
        """Chunk `chunk` of my staged rows, split by target shard: one return value per shard.

        The piece for my own shard stays here (None in its slot): no object-store copy. Routing a chunk at
        a time bounds the routed copies alive at once to about two chunks instead of the whole part.
        """
        assert self.staged is not None and self.targets is not None, "read_part and assign first"
        ids, vecs = self.staged
        lo, hi = len(ids) * chunk // chunks, len(ids) * (chunk + 1) // chunks
        ids, vecs, target = ids[lo:hi], vecs[lo:hi], self.targets[lo:hi]
        out: list[Any] = []
        for j in range(self.route_shards):
            mask = target == j
            piece = (ids, vecs) if mask.all() else (ids[mask], vecs[mask])  # all mine: views, no copy
            if j == self.shard:
                self.local_piece, piece = piece, None
            out.append(piece)
        if chunk == chunks - 1:
            self.staged = self.targets = None
        return out if len(out) > 1 else out[0]

    def check_ids(self, refs: Sequence[Any], where: str) -> int:
        """Duplicate ids inside one hash bucket of the input (every copy of an id lands in one bucket)."""
        ids = np.concatenate([np.asarray(r, np.int64) for r in ray.get(list(refs))])
        check_unique(ids, "id", where)
        return int(ids.size)

    def contains(self, refs: Sequence[Any]) -> int | None:
        """The first of the given ids that is already live in this shard, or None."""
        for ids in ray.get(list(refs)):
            hit = np.asarray(ids, np.int64)[self._is_live(np.asarray(ids, np.int64))]
            if hit.size:
                return int(hit[0])
        return None

    # ------------------------------------------------------------------ building and persisting

    def begin_build(self, capacity: int, params: dict[str, Any]) -> None:
        """An empty hnswlib index sized for the rows routed to me."""
        self.params = hnsw.HnswParams(**params)
        self.index = self._new_index(max(capacity, 1))
        self.built_ids = []
        self.build_seconds = 0.0

    def add_pieces(self, *pieces: tuple[np.ndarray, np.ndarray] | None) -> int:
        """Insert one chunk's pieces, in reader order (deterministic); a None slot is the piece I kept."""
        assert self.index is not None, "begin_build first"
        started = time.perf_counter()
        added = 0
        for reader, piece in enumerate(pieces):
            if piece is None and reader == self.shard:
                piece, self.local_piece = self.local_piece, None
            if piece is None or not len(piece[0]):
                continue
            part_ids, part_vecs = piece
            self.index.add_items(np.ascontiguousarray(part_vecs, np.float32), _u64(part_ids), num_threads=self.threads)
            self.built_ids.append(np.asarray(part_ids, np.int64).copy())  # the piece's buffer is freed after this call
            added += len(part_ids)
        self.build_seconds += time.perf_counter() - started
        return added

    def finish_build(self, where: str) -> dict[str, Any]:
        """Refuse duplicate ids, then persist the index I built."""
        ids = np.concatenate(self.built_ids) if self.built_ids else np.empty(0, np.int64)
        self.built_ids = []
        check_unique(ids, "id", where)
        self.live, self.deleted = np.sort(ids), np.empty(0, np.int64)
        self._persist()
        return self.stats()

    def _new_index(self, capacity: int) -> hnswlib.Index:
        p = self.params
        assert p is not None
        index = hnswlib.Index(space=p.space, dim=p.dim)
        index.init_index(max_elements=capacity, M=p.M, ef_construction=p.ef_construction, random_seed=p.random_seed)
        index.set_num_threads(self.threads)
        return index

    @staticmethod
    def _pieces(refs: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The non-empty routed pieces (zero-copy views of the object store)."""
        return [p for p in ray.get(list(refs)) if len(p[0])]

    def _gather(self, refs: Sequence[Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
        parts = self._pieces(refs)
        if len(parts) == 1:  # zero-copy view of the object store
            return parts[0][0].astype(np.int64, copy=False), np.ascontiguousarray(parts[0][1], np.float32)
        ids = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
        vecs = np.concatenate([p[1].reshape(-1, dim) for p in parts]) if parts else np.empty((0, dim), np.float32)
        return ids.astype(np.int64, copy=False), np.ascontiguousarray(vecs, np.float32)

    def _persist(self) -> None:
        """Write index, deleted ids and manifest (manifest last: it vouches for the other two)."""
        if self.replica != 0:
            return  # only the primary writes; replicas reload the primary's files
        assert self.index is not None and self.params is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        final = self.workdir / hnsw.shard_file(self.shard)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
        self.index.save_index(str(tmp))
        _replace_file(tmp, final)
        deleted = self.workdir / hnsw.deleted_file(self.shard)
        if self.deleted.size:
            tmp = deleted.with_name(f".{deleted.name}.{uuid.uuid4().hex[:8]}")
            write_parquet(pa.table({"id": self.deleted}), tmp)
            _replace_file(tmp, deleted)
        else:
            deleted.unlink(missing_ok=True)
        manifest = hnsw.build_shard_manifest(
            self.workdir, self.shard, self.params, count=self.index.element_count, live_ids=self.live,
            deleted=self.deleted.size,
        )
        write_json_atomic(self.workdir / hnsw.shard_manifest_file(self.shard), manifest)

    def _load_workdir(self) -> None:
        manifest, params = hnsw.load_shard_manifest(self.workdir, self.shard)
        self.params = params
        index = hnswlib.Index(space=params.space, dim=params.dim)
        try:
            index.load_index(str(self.workdir / hnsw.shard_file(self.shard)), max_elements=max(manifest["count"], 1))
        except RuntimeError as exc:
            raise CorruptArtifactError(f"{self.workdir / hnsw.shard_file(self.shard)}: cannot load ({exc})") from None
        index.set_num_threads(self.threads)
        deleted = np.empty(0, np.int64)
        if hnsw.deleted_file(self.shard) in manifest["files"]:
            import pyarrow.parquet as pq

            deleted = pq.read_table(self.workdir / hnsw.deleted_file(self.shard)).column("id").to_numpy()
        all_ids = np.asarray(index.get_ids_list(), np.uint64).view(np.int64)
        self.deleted = np.sort(deleted.astype(np.int64))
        self.live = np.sort(all_ids[~np.isin(all_ids, self.deleted)])
        if self.live.size != manifest["live"]:
            raise CorruptArtifactError(f"{self.workdir}: shard {self.shard} holds {self.live.size} live ids, manifest says {manifest['live']}")
        self.index = index

    def load_from(self, source_dir: str | None) -> dict[str, Any]:
        """Verify a saved shard (checksums), link it into my working directory, load it."""
        if source_dir is not None and index_store.store_uri_of(source_dir) is not None:  # download on my node
            source_dir = str(index_store.fetch_shard(index_store.store_uri_of(source_dir), self.shard))
        if source_dir is not None and Path(source_dir).resolve() != self.workdir.resolve():
            src = Path(source_dir)
            manifest, _ = hnsw.load_shard_manifest(src, self.shard)
            self.workdir.mkdir(parents=True, exist_ok=True)
            for name in [*manifest["files"], hnsw.shard_manifest_file(self.shard)]:
                _link_or_copy(confined(src, name, "shard manifest"), confined(self.workdir, name, "shard manifest"))
        self._load_workdir()
        return self.stats()

    def upload_to(self, attempt: str) -> dict[str, dict[str, Any]]:
        """Upload my files straight to an object-store attempt prefix (nothing passes through the driver)."""
        return index_store.upload_shard(self.workdir, self.shard, attempt)

    def save_to(self, directory: str) -> str:
        """Copy my current files into `directory` (a save in progress).

        A copy, not a link: a saved index must not share an inode with the live working files.
        """
        manifest, _ = hnsw.load_shard_manifest(self.workdir, self.shard)
        for name in [*manifest["files"], hnsw.shard_manifest_file(self.shard)]:
            shutil.copyfile(confined(self.workdir, name, "shard manifest"), confined(directory, name, "shard manifest"))
        return hnsw.shard_file(self.shard)

    # ------------------------------------------------------------------ updates

    def add(self, refs: Sequence[Any]) -> int:
        """Insert routed pieces (ids already checked for duplicates by the caller)."""
        assert self.index is not None and self.params is not None
        ids, vecs = self._gather(refs, self.params.dim)
        if not len(ids):
            return 0
        revived = np.isin(ids, self.deleted)  # a deleted id added again: hnswlib updates it in place
        need = self.index.element_count + int((~revived).sum())
        if need > self.index.max_elements:
            self.index.resize_index(max(need, int(self.index.max_elements * 1.5)))
        self.index.add_items(vecs, _u64(ids), num_threads=self.threads)
        self.deleted = self.deleted[~np.isin(self.deleted, ids)]
        self.live = np.union1d(self.live, ids)
        self._persist()
        return len(ids)

    def delete(self, ids: np.ndarray) -> int:
        """Mark live ids deleted; unknown ids are ignored. Returns how many were deleted here."""
        assert self.index is not None
        ids = np.unique(np.asarray(ids, np.int64))
        hit = ids[self._is_live(ids)]
        for label in _u64(hit).tolist():
            self.index.mark_deleted(label)
        if hit.size:
            self.live = np.setdiff1d(self.live, hit, assume_unique=True)
            self.deleted = np.union1d(self.deleted, hit)
            self._persist()
        return int(hit.size)

    def _is_live(self, ids: np.ndarray) -> np.ndarray:
        if not self.live.size:
            return np.zeros(len(ids), bool)
        pos = np.minimum(np.searchsorted(self.live, ids), self.live.size - 1)
        return self.live[pos] == ids

    # ------------------------------------------------------------------ searching

    def search(
        self, queries: np.ndarray, k: int, ef: int, allow: np.ndarray | None = None, exact_threshold: int = EXACT_THRESHOLD
    ) -> tuple[np.ndarray, np.ndarray]:
        """(q, k) ids/dists from this shard; ef is set inside this call (actor calls are serial)."""
        assert self.index is not None and self.params is not None
        queries = np.asarray(queries, np.float32)
        if allow is not None:
            return self._filtered(queries, k, ef, np.asarray(allow, np.int64), exact_threshold)
        kk = min(k, self.live.size)
        if kk == 0 or len(queries) == 0:
            return hnsw.empty_result(len(queries), k)
        self.index.set_ef(max(ef, kk))
        labels, dists = self.index.knn_query(queries, k=kk, num_threads=self.threads)
        return self._pad(labels, dists, k)

    def _filtered(self, queries: np.ndarray, k: int, ef: int, allow: np.ndarray, exact_threshold: int) -> tuple[np.ndarray, np.ndarray]:
        """Filtered search: brute force over a small allowed set, hnswlib's filter over a large one."""
        here = allow[self._is_live(allow)]
        if here.size == 0 or len(queries) == 0:
            return hnsw.empty_result(len(queries), k)
        kk = min(k, here.size)
        if here.size > exact_threshold:
            allowed = set(_u64(here).tolist())
            self.index.set_ef(max(ef, kk))
            try:
                labels, dists = self.index.knn_query(queries, k=kk, num_threads=1, filter=allowed.__contains__)
                return self._pad(labels, dists, k)
            except RuntimeError:
                pass  # hnswlib found fewer than kk allowed neighbours for some query: be exact instead
        vecs = self.index.get_items(_u64(here), return_type="numpy")
        return hnsw.exact_search(queries, np.asarray(vecs, np.float32), here, k, self.params.space)

    @staticmethod
    def _pad(labels: np.ndarray, dists: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(labels, np.uint64).view(np.int64)
        d = np.asarray(dists, np.float32)
        if ids.shape[1] < k:
            pad_i, pad_d = hnsw.empty_result(len(ids), k - ids.shape[1])
            ids, d = np.hstack([ids, pad_i]), np.hstack([d, pad_d])
        return ids, d

    def search_routed(self, batch: tuple[np.ndarray, np.ndarray], k: int, ef: int, router: dict[str, Any] | None, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """kNN-graph helper: answer only the rows of `batch` whose nprobe nearest cells include me."""
        _, vecs = batch
        if router is None:
            return self.search(vecs, k, ef)
        rows = np.flatnonzero((hnsw.Router.from_json(router).probe(vecs, nprobe) == self.shard).any(axis=1))
        ids, dists = hnsw.empty_result(len(vecs), k)
        if rows.size:
            ids[rows], dists[rows] = self.search(vecs[rows], k, ef)
        return ids, dists

    # ------------------------------------------------------------------ the all-points kNN graph

    def export_batch(self, batch: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `batch` of my sorted live ids with their vectors (a call result: the caller owns it)."""
        assert self.index is not None
        ids = self.live[batch * batch_size : (batch + 1) * batch_size]
        return ids, np.asarray(self.index.get_items(_u64(ids), return_type="numpy"), np.float32)

    def write_graph(self, batch: tuple[np.ndarray, np.ndarray], results: Sequence[Any], k: int, out: str,
                    name: str) -> tuple[int, dict[str, Any]]:
        """Merge the shards' answers for one batch of my points, drop self, put one Parquet part (rows, entry)."""
        ids = batch[0]
        merged = hnsw.merge_results(ray.get(list(results)), k + 1)
        nbr, dist = hnsw.drop_self(ids, *merged, k)
        flat_n, flat_d = pa.array(nbr.reshape(-1)), pa.array(dist.reshape(-1), pa.float32())
        offsets = pa.array(np.arange(0, nbr.size + 1, k, dtype=np.int32))
        table = pa.table(
            [pa.array(ids), pa.ListArray.from_arrays(offsets, flat_n), pa.ListArray.from_arrays(offsets, flat_d)],
            schema=KNN_GRAPH_SCHEMA,
        )
        return table.num_rows, sink.put_parquet(table, out, name)  # local: temporary + rename; store: the attempt

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, Any]:
        """Small numbers about this replica (sizes, memory, where it runs)."""
        index = self.index
        return {
            "shard": self.shard,
            "replica": self.replica,
            "reconstructed": self.reconstructed,
            "count": int(index.element_count) if index is not None else 0,
            "live": int(self.live.size),
            "deleted": int(self.deleted.size),
            "id_min": int(self.live[0]) if self.live.size else None,
            "id_max": int(self.live[-1]) if self.live.size else None,
            "id_high": int(max(self.live[-1:].tolist() + self.deleted[-1:].tolist(), default=-1)),  # live or deleted
            "threads": self.threads,
            "build_seconds": self.build_seconds,
            "index_bytes": int(index.index_file_size()) if index is not None else 0,
            "rss_bytes": _rss_bytes(),
            "rss_delta_bytes": _rss_bytes() - self.rss0,
            "peak_rss_delta_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.rss0,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }

    def ping(self) -> int:
        return self.shard

    def set_threads(self, threads: int) -> int:
        """Run hnswlib with `threads` threads (more than the CPUs reserved, when a stream keeps CPUs free)."""
        self.threads = max(1, int(threads))
        if self.index is not None:
            self.index.set_num_threads(self.threads)
        return self.threads


# =============================================================================== the driver's handle


class SearchResult(tuple):
    """`ids, dists = index.search(...)`; also carries `.coverage` (fraction of shard answers received)."""

    ids: np.ndarray
    dists: np.ndarray
    coverage: float

    def __new__(cls, ids: np.ndarray, dists: np.ndarray, coverage: float = 1.0) -> SearchResult:
        self = super().__new__(cls, (ids, dists))
        self.ids, self.dists, self.coverage = ids, dists, coverage
        return self


def _prepare_source(source: Source, validate: bool) -> tuple[Source, str, bool]:
    """(source, name for messages, trusted): in-memory data is validated once here, in the driver."""
    if isinstance(source, np.ndarray):
        return in_memory_table(source), "input", True  # from_numpy validates
    if isinstance(source, pa.Table):
        return validate_vectors(source, where="input"), "input", True
    if datasets.is_builtin(source):
        return source, str(source), True  # load_builtin validates
    origin = index_store.store_uri_of(source)  # a node-local copy: shard readers on other nodes read the store
    if origin is not None and origin != os.fspath(source):
        return origin, os.fspath(source), not validate
    return source, os.fspath(source), not validate


def _as_query_array(queries: Any, dim: int) -> np.ndarray:
    if isinstance(queries, np.ndarray | list):
        return hnsw.validate_queries(queries, dim)
    table = validate_vectors(read_shard(plan_shards(queries, 1)[0]), where=str(queries) if not isinstance(queries, pa.Table) else "queries", dim=dim)
    return to_numpy(table)[1]


def _layout(source: Source, where: str, shards: int | None, replicas: int, M: int, memory_fraction: float) -> sizing.ShardPlan:
    """Shards and CPUs per actor for this source on the connected cluster (an explicit `shards` wins)."""
    specs = plan_shards(source, 1)
    rows = sum(s.num_rows for s in specs)
    first = read_shard(dataclasses.replace(specs[0], stop=specs[0].start + 1))
    if "vector" not in first.column_names:
        raise DataError(f"{where}: missing column(s) ['vector']; found {first.column_names}")
    vector = first.column("vector")
    dim = vector.type.list_size if pa.types.is_fixed_size_list(vector.type) else np.asarray(vector[0].as_py() or []).size
    return sizing.plan(cluster_nodes(), rows, max(dim, 1), M, shards=shards, replicas=replicas, memory_fraction=memory_fraction)


def _default_cpus(actors: int) -> float:
    """An equal share of the CPUs free right now; 0 (one thread, nothing reserved) when none are free.

    Reserving only what is free lets several indexes (or an index and other stages) coexist instead of
    waiting forever for CPUs that a long-lived actor holds.
    """
    free = float(ray.available_resources().get("CPU", 0.0))
    share = math.floor(free / actors * 1000) / 1000  # floor: Ray counts in 1e-4 units, never over-ask
    return share if share >= 0.01 else 0.0


class ShardedIndex:
    """An HNSW index split over Ray actors. Build with `build`, reopen with `open`, free with `close`."""

    exact_threshold: int = EXACT_THRESHOLD  # filtered search is brute force in shards with this few allowed ids
    replica_timeout: float = 120.0  # seconds before a silent replica's work goes to the next replica

    def __init__(self, meta: dict[str, Any], actors: list[list[Any]], workdir: Path, pgs: list[Any], owned: bool) -> None:
        self.meta = meta
        self.actors = actors  # actors[shard][replica]
        self.workdir = workdir
        self._pgs = pgs
        self._owned = str(workdir) if owned else None
        self.router = hnsw.Router.from_json(meta["router"]) if meta.get("router") else None
        self._rr = 0
        self._finalizer = self._register_cleanup()

    def _register_cleanup(self) -> weakref.finalize:
        """Kill actors, free placement groups and remove the working directory when closed or collected."""
        return weakref.finalize(self, _cleanup, [a for row in self.actors for a in row], self._pgs, self._owned)

    # ------------------------------------------------------------------ construction

    @staticmethod
    def _spawn(shards: int, replicas: int, workdir: Path, cpus_per_actor: float | None, load: bool = False) -> tuple[list[list[Any]], list[Any], float]:
        """Create the primaries (replica 0) of every shard; replicas are added later by `_add_replicas`."""
        if cpus_per_actor is None:
            cpus_per_actor = _default_cpus(shards * replicas)
        pgs: list[Any] = []
        if replicas > 1 and cpus_per_actor > 0:
            # SPREAD puts the bundles (one per replica) on different nodes where there are several
            pgs = [placement_group([{"CPU": cpus_per_actor}] * replicas, strategy="SPREAD") for _ in range(shards)]
        try:
            actors = _start_primaries(shards, workdir, cpus_per_actor, pgs, load)
        except BaseException:
            _cleanup([], pgs, None)
            raise
        return actors, pgs, cpus_per_actor

    @classmethod
    def _spawn_or_clean(cls, shards: int, replicas: int, work: Path, cpus: float | None) -> tuple[list[list[Any]], list[Any], float]:
        try:
            return cls._spawn(shards, replicas, work, cpus)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _add_replicas(self, cpus: float) -> None:
        replicas = self.meta["replicas"]
        for j, row in enumerate(self.actors):
            for r in range(1, replicas):
                strategy: Any = PlacementGroupSchedulingStrategy(self._pgs[j], placement_group_bundle_index=r) if self._pgs else "SPREAD"
                row.append(HnswShard.options(num_cpus=cpus, scheduling_strategy=strategy).remote(j, r, str(self.workdir), cpus, True))
        _wait([a.ping.remote() for row in self.actors for a in row[1:]], "start replicas", timeout=READY_TIMEOUT_S)
        self._finalizer.detach()
        self._finalizer = self._register_cleanup()

    @classmethod
    def build(
        cls,
        source: Source,
        shards: int | None = None,
        space: str = "l2",
        M: int = 16,
        ef_construction: int = 200,
        partition: str = "hash",
        replicas: int = 1,
        *,
        random_seed: int = 100,
        cpus_per_actor: float | None = None,
        sample_size: int = 50_000,
        workdir: str | os.PathLike | None = None,
        validate: bool = True,
        memory_fraction: float = sizing.MEMORY_FRACTION,
    ) -> ShardedIndex:
        """Build an index over `source` (Parquet path/URI, pyarrow.Table, numpy array, builtin:NAME or a
        ray.data.Dataset with `id` and `vector` columns).

        `shards=None` sizes the index to the cluster (core/sizing.py: one shard per node with CPUs, more if
        a node's memory cannot hold its share); `cpus_per_actor=None` gives each actor its node's CPUs
        (those free right now, at most). `validate=False` trusts a Parquet source validated upstream.
        """
        hnsw.validate_layout(shards=shards or 1, replicas=replicas, partition=partition)
        hnsw.validate_params(dim=1, space=space, M=M, ef_construction=ef_construction, random_seed=random_seed)
        ensure_ray()
        if is_ray_dataset(source):
            with staged_dataset(source, None if workdir is None else os.fspath(workdir)) as staged:
                return cls.build(staged, shards, space, M, ef_construction, partition, replicas, random_seed=random_seed,
                                 cpus_per_actor=cpus_per_actor, sample_size=sample_size, workdir=workdir,
                                 validate=True, memory_fraction=memory_fraction)
        source, where, trusted = _prepare_source(source, validate)
        layout = _layout(source, where, shards, replicas, M, memory_fraction)
        shards = layout.shards
        if cpus_per_actor is None:
            cpus_per_actor = min(layout.cpus_per_actor, _default_cpus(shards * replicas))
        specs = plan_shards(source, shards)
        work, owned = _workdir(workdir)
        actors, pgs, cpus = cls._spawn_or_clean(shards, replicas, work, cpus_per_actor)
        meta: dict[str, Any] = {"shards": shards, "replicas": replicas, "partition": partition}
        index = cls(meta, actors, work, pgs, owned)
        try:
            index._build_restarting(cpus, specs, where, space, M, ef_construction, random_seed, sample_size, trusted)
            index._add_replicas(cpus)
        except BaseException:
            index.close()
            raise
        return index

    def _build_restarting(self, cpus: float, *args: Any) -> None:
        """`_build`; if a primary dies on the way, replace every primary and build again from the source.

        A dead primary takes with it its staged rows, the piece it kept and the pieces it `ray.put` (their
        owner is gone), and the survivors have spent their kept pieces: the source is the one consistent
        place to start again. The rebuild is deterministic, so the index equals a fault-free build's.
        """
        for attempt in range(BUILD_RESTARTS + 1):
            try:
                return self._build(*args)
            except ShardUnavailableError as exc:
                if attempt == BUILD_RESTARTS:
                    raise
                log.warning("%s; building again with new shard actors (restart %d of %d)", exc, attempt + 1, BUILD_RESTARTS)
                self._replace_primaries(cpus)

    def _replace_primaries(self, cpus: float) -> None:
        for actor in self._primaries():
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        for path in self.workdir.iterdir():  # files of the failed attempt: nothing may reload them
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        self.actors = _start_primaries(len(self.actors), self.workdir, cpus, self._pgs, False)
        self._finalizer.detach()
        self._finalizer = self._register_cleanup()

    def _primaries(self) -> list[Any]:
        return [row[0] for row in self.actors]

    def _read(self, specs: Sequence[Any], where: str, dim: int | None, sample: int, trusted: bool) -> tuple[list[Any], list[dict[str, Any]]]:
        """Primary i reads (and stages) part i; checks dimensions, trains the k-means router if any."""
        prim = self._primaries()
        readers = [prim[i % len(prim)] for i in range(len(specs))]
        metas = _wait([r.read_part.remote(s, sample, 0, where, dim, trusted) for r, s in zip(readers, specs)], "read input")
        dims = {m["dim"] for m in metas if m["rows"]}
        if not dims:
            raise DataError(f"{where}: input is empty (0 rows)")
        if len(dims) > 1:
            first = next(m for m in metas if m["rows"])
            other = next(m for m in metas if m["rows"] and m["dim"] != first["dim"])
            raise DataError(f"{where}: dimension differs between shards: rows from {other['start']} have {other['dim']}, rows from {first['start']} have {first['dim']}")
        if dim is None:
            dim = dims.pop()
            samples = [m["sample"] for m in metas if m["sample"] is not None and len(m["sample"])]
            if self.meta["partition"] == "kmeans":
                router = hnsw.train_router(np.concatenate(samples), len(prim), self.meta.get("space", "l2"))
                self.router = router
                self.meta["router"] = router.to_json()
        self.meta["dim"] = dim
        return readers, metas

    def _read_and_route(
        self, specs: Sequence[Any], where: str, dim: int | None, sample: int, trusted: bool
    ) -> tuple[list[dict[str, Any]], list[Any], list[Any]]:
        """Every primary reads its own rows; returns (metas, data refs [reader][shard], id refs [reader][bucket])."""
        readers, metas = self._read(specs, where, dim, sample, trusted)
        routed = _wait([r.route.remote(len(self.actors), self.meta.get("router")) for r in readers], "route input")
        return metas, [d for d, _ in routed], [i for _, i in routed]

    def _build(self, specs: Sequence[Any], where: str, space: str, M: int, efc: int, seed: int, sample: int, trusted: bool) -> None:
        self.meta["space"] = space
        sample_per_reader = hnsw.ceil_div(sample, len(specs)) if self.meta["partition"] == "kmeans" else 0
        readers, metas = self._read(specs, where, None, sample_per_reader, trusted)
        params = hnsw.validate_params(dim=self.meta["dim"], space=space, M=M, ef_construction=efc, random_seed=seed)
        self.meta["params"] = asdict(params)
        prim = self._primaries()
        assigned = _wait([r.assign.remote(len(prim), self.meta.get("router")) for r in readers], "route input")
        if self.meta["partition"] != "hash":  # hash routing already puts all copies of an id in one shard
            _wait([p.check_ids.remote([ids[j] for _, ids in assigned], where) for j, p in enumerate(prim)], "check ids")
        capacity = np.sum([counts for counts, _ in assigned], axis=0)
        started = time.perf_counter()
        _wait([p.begin_build.remote(int(capacity[j]), asdict(params)) for j, p in enumerate(prim)], "build shards")
        self._stream_pieces(readers, hnsw.route_chunks(max(m["rows"] for m in metas)))
        stats = _wait([p.finish_build.remote(where) for p in prim], "build shards")
        self.meta["build_seconds"] = time.perf_counter() - started
        self._record_sizes(stats)

    def _stream_pieces(self, readers: Sequence[Any], chunks: int) -> None:
        """Route and insert chunk by chunk, with one chunk in flight behind the one being inserted.

        Actor calls run in submission order, so a primary routes its chunk c before inserting chunk c; the
        driver drops chunk c's pieces (owned by it: they are call results) as soon as they are inserted.
        """
        prim = self._primaries()
        inflight: list[list[Any]] = []
        try:
            for chunk in range(chunks):
                routed = [r.route_chunk.options(num_returns=len(prim)).remote(chunk, chunks) for r in readers]
                routed = [row if len(prim) > 1 else [row] for row in routed]
                inflight.append([p.add_pieces.remote(*[row[j] for row in routed]) for j, p in enumerate(prim)])
                if len(inflight) == 2:
                    _wait(inflight[0], "insert pieces")
                    del inflight[0]
            while inflight:
                _wait(inflight[0], "insert pieces")
                del inflight[0]
        except ShardUnavailableError:
            _collect_quietly([ref for refs in inflight for ref in refs])
            raise

    def _record_sizes(self, stats: Sequence[dict[str, Any]]) -> None:
        self.meta["shard_sizes"] = [s["live"] for s in stats]
        self.meta["live"] = int(sum(self.meta["shard_sizes"]))
        self.meta["format"] = hnsw.FORMAT
        self.meta["dim"] = self.meta["params"]["dim"]
        write_json_atomic(self.workdir / hnsw.INDEX_FILE, self.meta)

    @classmethod
    def open(cls, path: str | os.PathLike, *, replicas: int | None = None, cpus_per_actor: float | None = None, workdir: str | os.PathLike | None = None) -> ShardedIndex:
        """Reopen a saved index (a directory or a store URI): every shard verifies its checksums and loads its file."""
        remote = index_store.store_uri_of(path)
        src = Path(path) if remote is None else index_store.fetch_index_json(remote)
        meta = hnsw.read_index_manifest(src)
        ensure_ray()
        if replicas is not None:
            hnsw.validate_layout(shards=meta["shards"], replicas=replicas, partition=meta["partition"])
            meta["replicas"] = replicas
        work, owned = _workdir(workdir)
        actors, pgs, cpus = cls._spawn_or_clean(meta["shards"], meta["replicas"], work, cpus_per_actor)
        index = cls(meta, actors, work, pgs, owned)
        try:
            stats = _wait([p.load_from.remote(remote or str(src)) for p in index._primaries()], f"open {remote or src}")
            index._record_sizes(stats)
            index._add_replicas(cpus)
        except BaseException:
            index.close()
            raise
        return index

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike, *, atomic: bool = True) -> Path | str:
        """Write the index to `path` atomically (temp dir + manifest + rename); replaces an older index.

        `atomic=False` writes straight into an existing empty directory whose owner commits it (a DAG
        stage's output directory).
        """
        if store.is_remote(os.fspath(path)):
            return self._save_remote(os.fspath(path))
        final = Path(path).absolute()
        if not atomic:
            if not final.is_dir() or any(final.iterdir()):
                raise ConfigError(f"{final}: save(atomic=False) needs an existing empty directory")
            self._write_files(final)
            return final
        occupied = final.exists() and (not final.is_dir() or any(final.iterdir()))
        if occupied and not (final / hnsw.INDEX_FILE).is_file():
            raise ConfigError(f"{final}: exists and is not a shardwalk index; refusing to overwrite")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            self._write_files(tmp)
            (tmp / MANIFEST).write_text(json.dumps(build_manifest(tmp, {"kind": "index"}), indent=1, sort_keys=True))
            _swap_in(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _save_remote(self, uri: str) -> str:
        """Save to an object store: shards upload their own files, the manifest is written last."""
        attempt = index_store.new_attempt(uri)
        entries = _wait([p.upload_to.remote(attempt) for p in self._primaries()], f"save {uri}")
        index_store.commit_index(attempt, self.meta, entries)
        return uri

    def _write_files(self, directory: Path) -> None:
        _wait([p.save_to.remote(str(directory)) for p in self._primaries()], f"save {directory}")
        write_json_atomic(directory / hnsw.INDEX_FILE, self.meta)

    # ------------------------------------------------------------------ updates

    def add(self, source: Source, *, validate: bool = True) -> int | np.ndarray:
        """Insert new vectors; duplicate ids (inside `source` or against the index) are a DataError.

        Returns the number of rows added; for a bare (n, d) array, which carries no ids, the fresh ids
        given to its rows (above every id the index holds or has deleted).
        """
        if isinstance(source, np.ndarray):
            ids = self._fresh_ids(len(source) if source.ndim == 2 else 0)
            self.add(from_numpy(source, ids=ids, where="input"), validate=validate)
            return ids
        source, where, trusted = _prepare_source(source, validate)
        specs = plan_shards(source, len(self.actors))
        metas, data, id_refs = self._read_and_route(specs, where, self.meta["dim"], 0, trusted)
        prim = self._primaries()
        _wait([p.check_ids.remote([row[j] for row in id_refs], where) for j, p in enumerate(prim)], "check ids")
        all_ids = [ref for row in id_refs for ref in row]
        for shard, hit in enumerate(_wait([p.contains.remote(all_ids) for p in prim], "check ids")):
            if hit is not None:
                raise DataError(f"{where}: id {hit} is already in the index (shard {shard})")
        calls = [a.add.remote([row[j] for row in data]) for j, reps in enumerate(self.actors) for a in reps]
        _wait(calls, "add")
        self._record_sizes(_wait([p.stats.remote() for p in prim], "stats"))
        return int(sum(m["rows"] for m in metas))

    def _fresh_ids(self, n: int) -> np.ndarray:
        """n ids no row of this index has ever had (so a deleted id is never silently revived)."""
        high = max(s["id_high"] for s in _wait([p.stats.remote() for p in self._primaries()], "stats"))
        return np.arange(high + 1, high + 1 + n, dtype=np.int64)

    def delete(self, ids: Sequence[int] | np.ndarray) -> int:
        """Delete ids (unknown ids are ignored); returns how many were deleted."""
        ids = np.unique(np.asarray(ids, np.int64).reshape(-1))
        shards = len(self.actors)
        if self.meta["partition"] == "hash":
            owner = hnsw.hash_shard(ids, shards)
            parts = [ids[owner == j] for j in range(shards)]
        else:
            parts = [ids] * shards
        done = _wait([a.delete.remote(parts[j]) for j, reps in enumerate(self.actors) for a in reps if parts[j].size], "delete")
        self._record_sizes(_wait([p.stats.remote() for p in self._primaries()], "stats"))
        replicas = len(self.actors[0])
        return int(sum(done) // replicas)

    # ------------------------------------------------------------------ search

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __len__(self) -> int:
        return int(self.meta["live"])

    def search(
        self,
        queries: Any,
        k: int = 10,
        ef: int = 64,
        nprobe: int | None = None,
        allow_ids: Sequence[int] | np.ndarray | None = None,
        allow_partial: bool = False,
        batch_size: int = 4096,
    ) -> SearchResult:
        """k nearest neighbours of each query: (q, k) int64 ids and float32 distances, -1/+inf padded."""
        q = _as_query_array(queries, self.dim)
        shards = len(self.actors)
        k, ef, nprobe = hnsw.validate_search(k, ef, len(self), nprobe, shards)
        allow_ref = None if allow_ids is None else ray.put(np.unique(np.asarray(allow_ids, np.int64)))
        if self.router is not None and nprobe < shards:
            probes = self.router.probe(q, nprobe)
            member = [(probes == j).any(axis=1) for j in range(shards)]
        else:
            member = [np.ones(len(q), bool)] * shards
        tasks = []  # (batch start, rows within the batch, shard)
        for b, (start, stop) in enumerate(hnsw.batches(len(q), batch_size)):
            full_ref = None
            for j in range(shards):
                rows = np.flatnonzero(member[j][start:stop])
                if not rows.size:
                    continue
                if rows.size == stop - start:
                    full_ref = full_ref or ray.put(q[start:stop])
                    payload = full_ref
                else:
                    payload = ray.put(q[start:stop][rows])
                tasks.append((start, stop, rows, j, (payload, k, ef, allow_ref, self.exact_threshold), b))
        answers = self._gather("search", [(j, args, b) for _, _, _, j, args, b in tasks], allow_partial)
        ids, dists = hnsw.empty_result(len(q), k)
        answered = 0
        per_batch: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for (start, stop, rows, _, _, _), ans in zip(tasks, answers):
            if ans is None:
                continue
            answered += 1
            pi, pd = hnsw.empty_result(stop - start, k)
            pi[rows], pd[rows] = ans
            per_batch.setdefault(start, []).append((pi, pd))
        for start, parts in per_batch.items():
            mi, md = hnsw.merge_results(parts, k)
            ids[start : start + len(mi)], dists[start : start + len(mi)] = mi, md
        return SearchResult(ids, dists, answered / len(tasks) if tasks else 1.0)

    def _gather(self, method: str, calls: Sequence[tuple[int, tuple[Any, ...], int]], allow_partial: bool) -> list[Any]:
        """Run calls on shard replicas (spread round-robin); fail over to other replicas on actor death.

        With several replicas a call that has not answered within `replica_timeout` seconds is sent to
        the next replica (a replica whose node died may sit in Ray's restart queue indefinitely).
        """
        replicas = len(self.actors[0])
        timeout = self.replica_timeout if replicas > 1 else None
        offset = self._rr
        self._rr += 1
        refs = [getattr(self.actors[j][(b + offset) % replicas], method).remote(*args) for j, args, b in calls]
        out: list[Any] = []
        for (j, args, b), ref in zip(calls, refs):
            first = (b + offset) % replicas
            result, error = None, None
            # every replica once, plus retries of the first: a killed actor restarts and reloads its shard
            for attempt in range(replicas + RESTART_RETRIES):
                try:
                    call = ref if attempt == 0 else getattr(self.actors[j][(first + attempt) % replicas], method).remote(*args)
                    result, error = ray.get(call, timeout=timeout), None
                    break
                except (RayActorError, GetTimeoutError) as exc:
                    error = exc
            if error is not None:
                if not allow_partial:
                    raise ShardUnavailableError(
                        f"shard {j}: no replica could answer ({type(error).__name__}); pass allow_partial=True to accept partial results"
                    ) from None
                result = None
            out.append(result)
        return out

    def search_dataset(
        self, source: Any, out: str | os.PathLike, *, k: int = 10, ef: int = 64, nprobe: int | None = None,
        block_size: int = 8192, pool: int = 2,
    ) -> dict[str, Any]:
        """Answer a query source of any size (Parquet file, directory, URI or ray.data.Dataset with `id` and
        `vector`) block by block on Ray Data, writing knn-graph rows as Parquet parts into directory `out`.

        Neither all queries nor all answers are ever held in one process (workers/query_stream.py).
        """
        settings = query_stream.QuerySettings(k, ef, nprobe, block_size, pool)
        return query_stream.search_dataset(self, source, out, settings)

    def set_threads(self, threads: int) -> None:
        """hnswlib threads of every shard actor (a restarted actor goes back to its reserved CPUs)."""
        _wait([a.set_threads.remote(threads) for row in self.actors for a in row], "set threads")

    # ------------------------------------------------------------------ the all-points kNN graph

    def knn_graph(
        self, out_dir: str | os.PathLike, k: int = 10, ef: int = 64, nprobe: int | None = None,
        batch_size: int = 4096, in_flight: int | None = None,
    ) -> dict[str, Any]:
        """Write docs/design.md's knn-graph table (every live point, self excluded) as Parquet parts in `out_dir`.

        Batches of each shard's points are answered whole by every (probed) shard; the owning shard
        merges, drops self and writes its part; at most `in_flight` batches (default two per shard) are
        in flight. A batch that loses an actor is retried after the actor restarts (workers/knn_graph.py).
        """
        shards = len(self.actors)
        k, ef, nprobe = hnsw.validate_search(k, ef, max(len(self) - 1, 0), nprobe, shards)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        router = self.meta.get("router") if nprobe < shards else None
        req = graph_units.GraphRequest(k, ef, nprobe, router, batch_size, Path(out_dir))
        sizes = self.meta["shard_sizes"]
        rows = graph_units.run(self.actors, sizes, req, in_flight)
        return {"rows": int(rows), "parts": sum(hnsw.ceil_div(n, batch_size) for n in sizes), "k": k}

    # ------------------------------------------------------------------ introspection and lifetime

    def stats(self) -> dict[str, Any]:
        """Sizes per shard (live, deleted, bytes), balance, placement and memory of every replica."""
        replicas = _wait([a.stats.remote() for row in self.actors for a in row], "stats")
        sizes = [r["live"] for r in replicas if r["replica"] == 0]
        return {
            "dim": self.dim,
            "space": self.meta["space"],
            "partition": self.meta["partition"],
            "params": self.meta["params"],
            "shards": len(self.actors),
            "replicas": len(self.actors[0]),
            "live": int(sum(sizes)),
            "shard_sizes": sizes,
            "balanced_within_2x": hnsw.shard_sizes_ok(sizes),
            "index_bytes": int(sum(r["index_bytes"] for r in replicas if r["replica"] == 0)),
            "actors": replicas,
        }

    def close(self) -> None:
        """Stop the actors and remove the private working directory."""
        self._finalizer()

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


WORKDIR_PREFIX = "shardwalk-index-"


def _workdir(workdir: str | os.PathLike | None) -> tuple[Path, bool]:
    """A private work directory named after this host and process; those of killed drivers are swept first."""
    parent = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temporaries(parent, WORKDIR_PREFIX)
    return Path(tempfile.mkdtemp(prefix=owned_prefix(f"{WORKDIR_PREFIX}w"), dir=parent)), True


def _start_primaries(shards: int, workdir: Path, cpus: float, pgs: list[Any], load: bool) -> list[list[Any]]:
    """One primary actor per shard (in bundle 0 of the shard's placement group, if any), answering."""
    actors: list[list[Any]] = []
    for j in range(shards):
        strategy: Any = PlacementGroupSchedulingStrategy(pgs[j], placement_group_bundle_index=0) if pgs else "SPREAD"
        actors.append([HnswShard.options(num_cpus=cpus, scheduling_strategy=strategy).remote(j, 0, str(workdir), cpus, load)])
    try:
        _wait([row[0].ping.remote() for row in actors], "start shard actors", timeout=READY_TIMEOUT_S)
    except BaseException:
        _cleanup([row[0] for row in actors], [], None)
        raise
    return actors


def _cleanup(actors: list[Any], pgs: list[Any], workdir: str | None) -> None:
    if ray.is_initialized():
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        for pg in pgs:
            with contextlib.suppress(Exception):
                remove_placement_group(pg)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


def _wait(refs: list[Any], what: str, timeout: float | None = None) -> list[Any]:
    """ray.get that turns a dead actor into ShardUnavailableError and unwraps our typed errors."""
    try:
        return ray.get(refs, timeout=timeout)
    except RayActorError as exc:
        raise ShardUnavailableError(f"{what}: a shard actor died ({type(exc).__name__})") from None
    except GetTimeoutError:
        raise ShardUnavailableError(f"{what}: timed out after {timeout:.0f}s waiting for shard actors (cluster CPUs all taken?)") from None
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if hasattr(exc, "cause") else None
        if isinstance(cause, DataError | ConfigError | CorruptArtifactError | ShardUnavailableError):
            raise cause from None
        if isinstance(cause, ObjectLostError):  # e.g. a routed piece whose owner, a shard actor, died
            raise ShardUnavailableError(f"{what}: data held by a dead shard actor was lost ({type(cause).__name__})") from None
        raise
    except ObjectLostError as exc:
        raise ShardUnavailableError(f"{what}: data held by a dead shard actor was lost ({type(exc).__name__})") from None


def _collect_quietly(refs: list[Any], timeout: float = 10.0) -> None:
    """Collect the outcomes of calls abandoned after a failure (Ray logs uncollected errors as unhandled)."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for ref in ready:
        with contextlib.suppress(Exception):
            ray.get(ref)


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing index at `final` is moved aside first, then removed."""
    trash = None
    if final.exists():
        trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:12]}"
        os.rename(final, trash)
    os.rename(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


# =============================================================================== evaluation helpers


@ray.remote(num_cpus=1)
def sample_part(spec: Any, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of one part whose seeded id hash falls below `fraction` (layout-independent sample)."""
    from core.datasets import hash_unit

    ids, vecs = to_numpy(read_shard(spec, ["id", "vector"]))
    keep = hash_unit(ids, seed) < fraction
    return ids[keep].copy(), vecs[keep].copy()


@ray.remote(num_cpus=1)
def exact_part(spec: Any, queries: np.ndarray, k: int, space: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k of `queries` within one part (merged by the caller into the exact answer)."""
    ids, vecs = to_numpy(read_shard(spec, ["id", "vector"]))
    return hnsw.exact_search(queries, vecs, ids, k, space)
