"""The `HnswShard` actor: one replica of one shard — read my part, route it, call hnswlib, persist.

Data flow of a build (the driver, workers/sharded_index.py, moves only ObjectRefs, paths and summaries):
  1. each primary reads *its own* rows of the source (shardwalk.core.storage.sources.read_shard) and validates them;
  2. `assign` picks each row's target shard (hash of id, or nearest k-means centroid); `route_chunk` then
     splits the part chunk by chunk, and the target primaries insert each chunk's pieces (`add_pieces`)
     while the next chunk is routed, so only about two chunks of routed copies exist at any time;
  3. each primary checks its ids are unique and persists its hnswlib index (native hnswlib file + JSON
     manifest with sha256) in the index's working directory;
  4. replicas load that file; a restarted actor (`max_restarts`) reloads it from there as well.
Actor methods run one at a time, so `set_ef` + `knn_query` inside one call never races with another
request; only the kNN graph's export and write steps run in a second thread (`GRAPH_IO`). `LocalHnswShard` is the plain class (usable in-process); `HnswShard` its actor.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from shardwalk.core.data.schema import check_unique, to_numpy, validate_vectors, vector_dim
from shardwalk.core.errors import CorruptArtifactError, DataError, ShardStateError
from shardwalk.core.index import hnsw, hnsw_results, index_store
from shardwalk.core.index.row_chunks import RowChunks
from shardwalk.core.storage import node_cache, sink, store
from shardwalk.core.storage.files import confined, sha256_file, write_json_atomic, write_parquet
from shardwalk.core.storage.sources import read_shard, release_arrow_memory
from shardwalk.workers.index_eval import peak_rss_bytes, rss_bytes
from shardwalk.workers.raykit import was_reconstructed

# The kNN graph's single-threaded steps (export a batch; merge + write a part) run in a second actor thread,
# overlapping the next batch's hnswlib search. They only read the index or no actor state at all, and the
# graph never runs during add/delete (the driver's calls are synchronous).
GRAPH_IO = "graph_io"
EXACT_THRESHOLD = 20_000  # allowed ids in a shard at or below which filtered search is brute force
# What hnswlib raises when a filter leaves fewer than k allowed neighbours reachable for some query: only
# this falls back to exact search; any other RuntimeError is a real failure and propagates.
HNSWLIB_TOO_FEW = "Cannot return the results in a contiguous 2D array"


def _u64(ids: np.ndarray) -> np.ndarray:
    """hnswlib labels are size_t: reinterpret int64 ids bit for bit (negative ids survive the trip)."""
    return np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible (files are only ever replaced, never rewritten in place)."""
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _targets(ids: np.ndarray, vecs: np.ndarray, shards: int, router: dict[str, Any] | None) -> np.ndarray:
    """The shard each row goes to: the hash of its id, or its nearest k-means centroid."""
    return hnsw.hash_shard(ids, shards) if router is None else hnsw.Router.from_json(router).assign(vecs)


def _need(value: Any, step: str) -> Any:
    """`value`, or ShardStateError naming the step that should have set it (typed: survives `python -O`)."""
    if value is None:
        raise ShardStateError(f"shard actor: call {step} first")
    return value


class LocalHnswShard:
    """One replica of one shard: load my part, call core / hnswlib, persist."""

    def __init__(self, shard: int, replica: int, workdir: str, cpus: float, load: bool = False) -> None:
        self.shard, self.replica = shard, replica
        self.workdir = Path(workdir)
        self.threads = hnsw.threads_for(cpus)
        self.rss0 = rss_bytes()  # memory before data (raised by library code imported later: _convert_arrow)
        self._importing = threading.Lock()  # the graph's I/O methods run beside the others (concurrency group)
        self.index: hnswlib.Index | None = None
        self.params: hnsw.HnswParams | None = None
        self.live = np.empty(0, np.int64)  # sorted live ids
        self.deleted = np.empty(0, np.int64)  # sorted deleted ids (still in the hnswlib graph)
        self.staged: RowChunks | None = None
        self._released = 0  # staged batches already dropped
        self.local_piece: tuple[np.ndarray, np.ndarray] | None = None
        self.targets: np.ndarray | None = None  # target shard of each staged row (assign)
        self.route_shards = 0
        self.built_ids: list[np.ndarray] = []
        self.build_seconds = 0.0
        self.reconstructed = was_reconstructed()
        # Restarted before its shard was ever persisted (killed mid-build), it has nothing to reload: it
        # stays empty, and the driver's build replaces it.
        persisted = (self.workdir / hnsw.shard_manifest_file(shard)).is_file()
        if load or (self.reconstructed and persisted):
            self._load_workdir()

    def _convert_arrow(self) -> None:
        """Before this replica first converts between Arrow and numpy: pyarrow imports pandas for that (~35 MB
        of code, ~0.3 CPU-s), which a replica that only loads hnswlib's files and searches never needs. Its memory
        growth joins the baseline, so per-vector figures measure data, not library code."""
        with self._importing:
            if "pandas" not in sys.modules:
                before = rss_bytes()
                import pandas  # noqa: F401  (deferred on purpose: only a replica that converts Arrow data pays for it)

                self.rss0 += rss_bytes() - before

    # ------------------------------------------------------------------ reading and routing

    def read_part(self, spec: Any, sample: int, seed: int, where: str, dim: int | None, trusted: bool) -> dict[str, Any]:
        """Read (and unless `trusted`, validate) my rows; keep them staged; return a small sample for k-means.

        `trusted` = validated upstream (in the driver for in-memory data, or by the ingest stage):
        docs/design.md validates once at the edge, and re-validating would cost copies of the data.
        """
        self._convert_arrow()
        if spec.num_rows == 0:
            self.staged = RowChunks([], [], dim or 0)
            return {"rows": 0, "dim": dim, "start": spec.start, "sample": None}
        if trusted:
            table = read_shard(spec, ["id", "vector"])
            if dim is not None and vector_dim(table) != dim:
                raise DataError(f"{where}: column 'vector' has dimension {vector_dim(table)}, expected {dim}")
        else:
            table = validate_vectors(read_shard(spec), where=where, row_offset=spec.start, dim=dim)
        self._released = 0
        staged = self.staged = RowChunks.from_table(table, vector_dim(table))  # views of the Arrow batches: no copy
        del table
        release_arrow_memory()  # the Parquet reader's transient buffers
        rng = np.random.default_rng([seed, spec.index])
        pick = rng.choice(len(staged), size=min(sample, len(staged)), replace=False) if sample else np.empty(0, np.int64)
        return {"rows": len(staged), "dim": staged.dim, "start": spec.start, "sample": staged.take(np.sort(pick))}

    def assign(self, shards: int, router: dict[str, Any] | None, buckets: bool | None = None) -> tuple[list[int], list[Any]]:
        """Choose (and keep) the target shard of each staged row; return rows per target and ids by hash bucket.

        The id buckets (for the duplicate check) are made when `buckets` asks, by default only with a
        router: hash routing already sends every copy of an id to one shard, which checks them itself.
        """
        staged: RowChunks = _need(self.staged, "read_part")
        parts = [_targets(i, v, shards, router) for i, v in staged.batches()]
        self.targets = np.concatenate(parts) if parts else np.empty(0, np.int64)
        self.route_shards = shards
        counts = np.bincount(self.targets, minlength=shards).tolist()
        if not (router is not None if buckets is None else buckets):
            return counts, []
        ids = staged.all_ids()
        bucket = hnsw.hash_shard(ids, shards)
        return counts, [ray.put(ids[bucket == j]) for j in range(shards)]

    def route_chunk(self, chunk: int, chunks: int, keep_local: bool = True) -> Any:
        """Chunk `chunk` of my staged rows, split by target shard: one return value per shard.

        With `keep_local` the piece for my own shard stays here (None in its slot, no object-store copy)
        for `add_pieces`. Routing a chunk at a time bounds the routed copies alive at once to about two
        chunks instead of the whole part.
        """
        staged: RowChunks = _need(self.staged, "read_part")
        target = _need(self.targets, "assign")
        lo, hi = len(staged) * chunk // chunks, len(staged) * (chunk + 1) // chunks
        (ids, vecs), target = staged.rows(lo, hi), target[lo:hi]
        out: list[Any] = []
        for j in range(self.route_shards):
            mask = target == j
            piece = (ids, vecs) if mask.all() else (ids[mask], vecs[mask])  # all mine: views, no copy
            if keep_local and j == self.shard:
                self.local_piece, piece = piece, None
            out.append(piece)
        released = staged.release_before(hi)  # batches fully routed: their buffers go once the pieces are sent
        if chunk == chunks - 1:
            self.staged = self.targets = None
        if released > self._released:
            self._released = released
            release_arrow_memory()
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
        index = _need(self.index, "begin_build")
        started = time.perf_counter()
        added = 0
        for reader, piece in enumerate(pieces):
            if piece is None and reader == self.shard:
                piece, self.local_piece = self.local_piece, None
            if piece is None or not len(piece[0]):
                continue
            part_ids, part_vecs = piece
            index.add_items(np.ascontiguousarray(part_vecs, np.float32), _u64(part_ids), num_threads=self.threads)
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
        release_arrow_memory()
        return self.stats()

    def _new_index(self, capacity: int) -> hnswlib.Index:
        p = _need(self.params, "begin_build")
        index = hnswlib.Index(space=p.space, dim=p.dim)
        index.init_index(max_elements=capacity, M=p.M, ef_construction=p.ef_construction, random_seed=p.random_seed)
        index.set_num_threads(self.threads)
        return index

    def _persist(self) -> None:
        """Write index, deleted ids and manifest (manifest last: it vouches for the other two)."""
        if self.replica != 0:
            return  # only the primary writes; replicas reload the primary's files
        index, params = _need(self.index, "begin_build"), _need(self.params, "begin_build")
        self.workdir.mkdir(parents=True, exist_ok=True)
        final = self.workdir / hnsw.shard_file(self.shard)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
        index.save_index(str(tmp))
        os.replace(tmp, final)
        deleted = self.workdir / hnsw.deleted_file(self.shard)
        if self.deleted.size:
            self._convert_arrow()
            tmp = deleted.with_name(f".{deleted.name}.{uuid.uuid4().hex[:8]}")
            write_parquet(pa.table({"id": self.deleted}), tmp)
            os.replace(tmp, deleted)
        else:
            deleted.unlink(missing_ok=True)
        manifest = hnsw.build_shard_manifest(
            self.workdir, self.shard, params, count=index.element_count, live_ids=self.live, deleted=self.deleted.size,
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
            self._convert_arrow()
            deleted = pq.read_table(self.workdir / hnsw.deleted_file(self.shard)).column("id").to_numpy()
        all_ids = np.asarray(index.get_ids_list(), np.uint64).view(np.int64)
        self.deleted = np.sort(deleted.astype(np.int64))
        self.live = np.sort(all_ids[~np.isin(all_ids, self.deleted)])
        if self.live.size != manifest["live"]:
            raise CorruptArtifactError(f"{self.workdir}: shard {self.shard} holds {self.live.size} live ids, manifest says {manifest['live']}")
        self.index = index

    def load_from(self, source_dir: str | None, expect: str | None = None) -> dict[str, Any]:
        """Verify a saved shard (checksums), link it into my working directory, load it.

        `source_dir` on a store is the exact committed attempt the driver opened: downloaded on my node. In a
        local directory, `expect` is the sha256 of my shard manifest as the driver read it: a directory saved
        again meanwhile is refused rather than mixed with the version the driver opened.
        """
        with node_cache.holding():  # the downloaded copy is kept until it is linked into my working directory
            if source_dir is not None and store.is_remote(source_dir):
                source_dir = str(index_store.fetch_shard(source_dir, self.shard))
            if source_dir is not None and Path(source_dir).resolve() != self.workdir.resolve():
                src = Path(source_dir)
                manifest, _ = hnsw.load_shard_manifest(src, self.shard)
                self.workdir.mkdir(parents=True, exist_ok=True)
                for name in [*manifest["files"], hnsw.shard_manifest_file(self.shard)]:
                    _link_or_copy(confined(src, name, "shard manifest"), confined(self.workdir, name, "shard manifest"))
                mine = self.workdir / hnsw.shard_manifest_file(self.shard)  # checked in my private copy: no race
                if expect is not None and sha256_file(mine) != expect:
                    raise CorruptArtifactError(f"{src}: shard {self.shard} changed after the index was opened "
                                               "(saved again meanwhile); open it again")
        self._load_workdir()
        return self.stats()

    def upload_to(self, attempt: str) -> dict[str, dict[str, Any]]:
        """Upload my files straight to an object-store attempt prefix (nothing passes through the driver)."""
        return index_store.upload_shard(self.workdir, self.shard, attempt)

    def save_to(self, directory: str) -> str:
        """Copy my current files into `directory` (a save in progress).

        A copy, not a link: a saved index must not share an inode with the live working files (a saved file
        rewritten in place — a corruption test, a user's tool — would corrupt the live shard too).
        """
        sink.check_local(directory)  # never another node's scratch (a stage on a store passes its attempt URI)
        manifest, _ = hnsw.load_shard_manifest(self.workdir, self.shard)
        for name in [*manifest["files"], hnsw.shard_manifest_file(self.shard)]:
            shutil.copyfile(confined(self.workdir, name, "shard manifest"), confined(directory, name, "shard manifest"))
        return hnsw.shard_file(self.shard)

    # ------------------------------------------------------------------ updates

    def add(self, refs: Sequence[Any]) -> int:
        """Insert routed pieces (ids already checked for duplicates by the caller)."""
        index, params = _need(self.index, "begin_build or load_from"), _need(self.params, "begin_build or load_from")
        ids, vecs = hnsw_results.concat_pieces(ray.get(list(refs)), params.dim)
        if not len(ids):
            return 0
        revived = np.isin(ids, self.deleted)  # a deleted id added again: hnswlib updates it in place
        need = index.element_count + int((~revived).sum())
        if need > index.max_elements:
            index.resize_index(max(need, int(index.max_elements * 1.5)))
        index.add_items(vecs, _u64(ids), num_threads=self.threads)
        self.deleted = self.deleted[~np.isin(self.deleted, ids)]
        self.live = np.union1d(self.live, ids)
        self._persist()
        return len(ids)

    def delete(self, ids: np.ndarray) -> int:
        """Mark live ids deleted; unknown ids are ignored. Returns how many were deleted here."""
        index = _need(self.index, "begin_build or load_from")
        ids = np.unique(np.asarray(ids, np.int64))
        hit = ids[self._is_live(ids)]
        for label in _u64(hit).tolist():
            index.mark_deleted(label)
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
        """(q, k) ids (int32 when they all fit) / dists from this shard; ef is set inside this call (actor calls are serial)."""
        return hnsw_results.narrow_ids(*self._search(queries, k, ef, allow, exact_threshold))

    def _search(self, queries: np.ndarray, k: int, ef: int, allow: np.ndarray | None, exact_threshold: int) -> tuple[np.ndarray, np.ndarray]:
        index = _need(self.index, "begin_build or load_from")
        queries = np.asarray(queries, np.float32)
        if allow is not None:
            return self._filtered(queries, k, ef, np.asarray(allow, np.int64), exact_threshold)
        kk = min(k, self.live.size)
        if kk == 0 or len(queries) == 0:
            return hnsw.empty_result(len(queries), k)
        index.set_ef(max(ef, kk))
        labels, dists = index.knn_query(queries, k=kk, num_threads=self.threads)
        return hnsw_results.labels_as_ids(labels, dists, k)

    def _filtered(self, queries: np.ndarray, k: int, ef: int, allow: np.ndarray, exact_threshold: int) -> tuple[np.ndarray, np.ndarray]:
        """Filtered search: brute force over a small allowed set, hnswlib's filter over a large one."""
        index, params = _need(self.index, "begin_build or load_from"), _need(self.params, "begin_build or load_from")
        here = allow[self._is_live(allow)]
        if here.size == 0 or len(queries) == 0:
            return hnsw.empty_result(len(queries), k)
        kk = min(k, here.size)
        if here.size > exact_threshold:
            allowed = set(_u64(here).tolist())
            index.set_ef(max(ef, kk))
            try:
                labels, dists = index.knn_query(queries, k=kk, num_threads=1, filter=allowed.__contains__)
                return hnsw_results.labels_as_ids(labels, dists, k)
            except RuntimeError as exc:
                if HNSWLIB_TOO_FEW not in str(exc):
                    raise
                # hnswlib found fewer than kk allowed neighbours for some query: be exact instead
        vecs = index.get_items(_u64(here), return_type="numpy")
        return hnsw.exact_search(queries, np.asarray(vecs, np.float32), here, k, params.space)

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

    @ray.method(concurrency_group=GRAPH_IO)
    def export_batch(self, batch: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch `batch` of my sorted live ids with their vectors (a call result: the caller owns it)."""
        index = _need(self.index, "begin_build or load_from")
        ids = self.live[batch * batch_size : (batch + 1) * batch_size]
        return ids, np.asarray(index.get_items(_u64(ids), return_type="numpy"), np.float32)

    @ray.method(concurrency_group=GRAPH_IO)
    def read_batch(self, spec: Any) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the vectors the index was built from (a ShardSpec): a kNN-graph batch without hnswlib's
        get_items, which copies one point at a time (~10-15 µs each) while holding the GIL."""
        self._convert_arrow()
        ids, vecs = to_numpy(read_shard(spec, ["id", "vector"]))
        return ids.copy(), vecs.copy()  # own the memory: the Arrow buffers go with the table

    @ray.method(concurrency_group=GRAPH_IO)
    def write_graph(self, batch: tuple[np.ndarray, np.ndarray], results: Sequence[Any], k: int, out: str,
                    name: str) -> tuple[int, dict[str, Any]]:
        """Merge the shards' answers for one batch of my points, drop self, put one Parquet part (rows, entry)."""
        self._convert_arrow()
        ids = batch[0]
        merged = hnsw.merge_results(ray.get(list(results)), k + 1)
        table = hnsw_results.knn_graph_table(ids, *hnsw.drop_self(ids, *merged, k))
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
            "rss_bytes": rss_bytes(),
            "rss_delta_bytes": rss_bytes() - self.rss0,
            "peak_rss_delta_bytes": peak_rss_bytes() - self.rss0,
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
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


HnswShard = ray.remote(max_restarts=3, max_task_retries=0, concurrency_groups={GRAPH_IO: 1})(LocalHnswShard)
