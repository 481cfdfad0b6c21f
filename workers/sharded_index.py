"""`ShardedIndex`, the user's handle on an HNSW index split over `HnswShard` actors (workers/hnsw_actor.py).

The driver moves only ObjectRefs, paths and small summaries; building is workers/index_build.py, the
fan-out of searches workers/index_search.py, the actors' lifetime workers/index_actors.py. The working
directory must be visible to every node (a shared file system) on a multi-node cluster: replicas and
restarted actors reload from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from shardwalk.core import validate
from shardwalk.core.data.schema import Columns, apply_columns, check_vector_columns, from_numpy
from shardwalk.core.errors import ConfigError, DataError, ShardUnavailableError
from shardwalk.core.index import hnsw, hnsw_results, index_store
from shardwalk.core.index.index_meta import IndexMeta
from shardwalk.core.index.spec import DEFAULT_BUILD, DEFAULT_SEARCH, BuildSpec, SearchSpec
from shardwalk.core.storage import node_cache, sink, store
from shardwalk.core.storage.files import MANIFEST, TOKEN, build_manifest, read_manifest, write_json_atomic
from shardwalk.core.storage.sources import ShardSpec, Source, plan_shards, source_schema
from shardwalk.workers import index_actors, index_build, index_search, query_stream, raykit
from shardwalk.workers import knn_graph as graph_units
from shardwalk.workers.autoconnect import ensure_ray
from shardwalk.workers.hnsw_actor import EXACT_THRESHOLD
from shardwalk.workers.progress_channel import wait_counted
from shardwalk.workers.ray_datasets import check_columns, is_ray_dataset, staged_dataset

BUILD_RESTARTS = 2  # fresh builds after a primary dies mid-build

log = logging.getLogger("shardwalk")


class SearchResult(tuple):
    """`ids, dists = index.search(...)`; also carries `.coverage` (fraction of shard answers received)."""

    ids: np.ndarray
    dists: np.ndarray
    coverage: float

    def __new__(cls, ids: np.ndarray, dists: np.ndarray, coverage: float = 1.0) -> SearchResult:
        self = super().__new__(cls, (ids, dists))
        self.ids, self.dists, self.coverage = ids, dists, coverage
        return self


def swap_in(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; an existing index at `final` is moved aside first, then removed."""
    trash = None
    if final.exists():
        trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:12]}"
        os.rename(final, trash)
    os.rename(tmp, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _shard_digests(directory: Path, shards: int) -> list[str | None]:
    """The sha256 of each shard's manifest as the committed directory lists it (what its shard must load)."""
    listed = read_manifest(directory)["files"]
    entries = [listed.get(hnsw.shard_manifest_file(j)) for j in range(shards)]
    return [e.get("sha256") if isinstance(e, dict) else None for e in entries]


def _renamed(source: Source, columns: Columns) -> Source:
    """`source` with the user's id and vector columns as `id` and `vector`: a table renamed in place, a Parquet
    source (checked from its footer first) read through Ray Data and staged like a ray.data.Dataset."""
    if columns.is_default() or isinstance(source, np.ndarray):
        return source
    if isinstance(source, pa.Table):
        return apply_columns(source, columns, "input")
    if is_ray_dataset(source):
        check_columns(source, (columns.id, columns.vector))
        return source.rename_columns({columns.id: "id", columns.vector: "vector"})
    where = os.fspath(source)
    check_vector_columns(source_schema(source), columns, where)
    import ray.data

    dataset = ray.data.read_parquet(where).select_columns([columns.id, columns.vector])
    return dataset.rename_columns({columns.id: "id", columns.vector: "vector"})


class ShardedIndex:
    """An HNSW index split over Ray actors. Build with `build`, reopen with `open`, free with `close`."""

    exact_threshold: int = EXACT_THRESHOLD  # filtered search is brute force in shards with this few allowed ids
    replica_timeout: float = 120.0  # seconds before a silent replica's work goes to the next replica
    _spawn = staticmethod(index_actors.spawn)

    def __init__(self, meta: IndexMeta, actors: list[list[Any]], workdir: Path, pgs: list[Any], owned: bool) -> None:
        self.actors = actors  # actors[shard][replica]
        self.workdir = workdir
        self._pgs = pgs
        self._owned = str(workdir) if owned else None
        self._set_meta(meta)
        self._rr = 0
        self.threads = 0  # hnswlib threads given to new actors (0: what each actor's reserved CPUs give)
        self._finalizer = self._register_cleanup()

    def _set_meta(self, meta: IndexMeta) -> None:
        """The index's manifest (a frozen value) and the router it implies."""
        self.meta = meta
        self.router = hnsw.Router.from_json(meta.router) if meta.router else None

    def _register_cleanup(self) -> weakref.finalize:
        """Kill actors, free placement groups and remove the working directory when closed or collected."""
        return weakref.finalize(self, raykit.release, [a for row in self.actors for a in row], self._pgs, self._owned)

    def _renew_cleanup(self) -> None:
        self._finalizer.detach()
        self._finalizer = self._register_cleanup()

    # ------------------------------------------------------------------ construction

    @classmethod
    def _spawn_or_clean(cls, shards: int, replicas: int, work: Path, cpus: float | None) -> tuple[list[list[Any]], list[Any], float]:
        try:
            return cls._spawn(shards, replicas, work, cpus)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _add_replicas(self, cpus: float) -> None:
        index_actors.add_replicas(self.actors, self.meta.replicas, self.workdir, cpus, self._pgs)
        self._thread([a for row in self.actors for a in row[1:]])

    def _thread(self, actors: list[Any]) -> None:
        """Newly started actors run `self.threads` hnswlib threads (the sizing rule's, not only the CPUs
        they could reserve: a reserve taken while the last stage's actors still held the CPUs is short)."""
        if self.threads and actors:
            raykit.wait_all([a.set_threads.remote(self.threads) for a in actors], "set threads")
        self._renew_cleanup()

    @classmethod
    def build(
        cls,
        source: Source,
        shards: int | None = None,
        space: str = DEFAULT_BUILD.space,
        M: int = DEFAULT_BUILD.M,
        ef_construction: int = DEFAULT_BUILD.ef_construction,
        partition: str = DEFAULT_BUILD.partition,
        replicas: int = DEFAULT_BUILD.replicas,
        *,
        random_seed: int = DEFAULT_BUILD.random_seed,
        cpus_per_actor: float | None = None,
        sample_size: int = 50_000,
        workdir: str | os.PathLike | None = None,
        validate: bool = True,
        memory_fraction: float = DEFAULT_BUILD.memory_fraction,
        id_column: str = "id",
        vector_column: str = "vector",
    ) -> ShardedIndex:
        """Build an index over `source` (Parquet path/URI, pyarrow.Table, numpy array, builtin:NAME or a
        ray.data.Dataset with `id` and `vector` columns, or those named by `id_column` / `vector_column`).

        `shards=None` sizes the index to the cluster (core/plan/sizing.py: one shard per node with CPUs, more if
        a node's memory cannot hold its share); `cpus_per_actor=None` gives each actor its node's CPUs
        (those free right now, at most). `validate=False` trusts a Parquet source validated upstream.
        The keywords are checked here, once, into a BuildSpec (core/index/spec.py).
        """
        spec = BuildSpec(shards=shards or 0, replicas=replicas, partition=partition, space=space, M=M,
                         ef_construction=ef_construction, random_seed=random_seed, memory_fraction=memory_fraction)
        return cls.build_spec(source, spec, cpus_per_actor=cpus_per_actor, sample_size=sample_size, workdir=workdir,
                              validate=validate, id_column=id_column, vector_column=vector_column)

    @classmethod
    def build_spec(
        cls, source: Source, spec: BuildSpec, *, cpus_per_actor: float | None = None, sample_size: int = 50_000,
        workdir: str | os.PathLike | None = None, validate: bool = True, id_column: str = "id",
        vector_column: str = "vector",
    ) -> ShardedIndex:
        """`build` from a BuildSpec (already checked when it was made: nothing in it is checked again)."""
        ensure_ray()
        source = _renamed(source, Columns(id_column, vector_column))
        if is_ray_dataset(source):
            with staged_dataset(source, None if workdir is None else os.fspath(workdir)) as staged:
                return cls.build_spec(staged, spec, cpus_per_actor=cpus_per_actor, sample_size=sample_size,
                                      workdir=workdir, validate=True)
        source, where, trusted = index_build.prepare_source(source, validate)
        layout = index_build.plan_layout(source, where, spec)
        if cpus_per_actor is None:
            cpus_per_actor = min(layout.cpus_per_actor, index_actors.default_cpus(layout.shards * spec.replicas))
        inp = index_build.BuildInput(tuple(plan_shards(source, layout.shards)), where, trusted, spec, sample_size)
        work, owned = index_actors.make_workdir(workdir)
        actors, pgs, cpus = cls._spawn_or_clean(layout.shards, spec.replicas, work, cpus_per_actor)
        index = cls(IndexMeta(layout.shards, spec.replicas, spec.partition, space=spec.space), actors, work, pgs, owned)
        index.threads = layout.threads  # the node's CPUs, whatever was free to reserve just now
        try:
            index._thread(index._primaries())
            index._build_restarting(cpus, inp)
            index._add_replicas(cpus)
        except BaseException:
            index.close()
            raise
        return index

    def _build_restarting(self, cpus: float, inp: index_build.BuildInput) -> None:
        """Build; if a primary dies on the way, replace every primary and build again from the source.

        A dead primary takes with it its staged rows, the piece it kept and the pieces it `ray.put` (their
        owner is gone), and the survivors have spent their kept pieces: the source is the one consistent
        place to start again. The rebuild is deterministic, so the index equals a fault-free build's.
        """
        for attempt in range(BUILD_RESTARTS + 1):
            try:
                meta, stats = index_build.build_shards(self._primaries(), self.meta, inp)
                self._set_meta(meta)
                self._record_sizes(stats)
                return
            except ShardUnavailableError as exc:
                if attempt == BUILD_RESTARTS:
                    raise
                log.warning("%s; building again with new shard actors (restart %d of %d)", exc, attempt + 1, BUILD_RESTARTS)
                self.actors = index_actors.replace_primaries(self.actors, self.workdir, cpus, self._pgs)
                self._thread(self._primaries())
                self._renew_cleanup()

    def _primaries(self) -> list[Any]:
        return [row[0] for row in self.actors]

    def _record_sizes(self, stats: Sequence[dict[str, Any]]) -> None:
        """Shard sizes from the primaries' stats into the meta, and the meta into the working directory."""
        sizes = tuple(int(s["live"]) for s in stats)
        params = self.meta.params
        self._set_meta(dataclasses.replace(self.meta, shard_sizes=sizes, live=int(sum(sizes)),
                                           dim=params.dim if params is not None else self.meta.dim))
        write_json_atomic(self.workdir / hnsw.INDEX_FILE, self.meta.to_json())

    @classmethod
    def open(cls, path: str | os.PathLike, *, replicas: int | None = None, cpus_per_actor: float | None = None, workdir: str | os.PathLike | None = None) -> ShardedIndex:
        """Reopen a saved index (a directory or a store URI): every shard verifies its checksums and loads its file.

        On a store the newest committed attempt is resolved once, here, and every shard loads that attempt:
        a save committing meanwhile is not mixed in.
        """
        remote = index_store.store_uri_of(path)
        with node_cache.holding():  # the JSON copy stays until it is read
            if remote is not None:  # one attempt, resolved here, is what every shard loads
                remote, src = index_store.open_attempt(remote)
            else:
                src = Path(path)
            meta = IndexMeta.from_json(hnsw.read_index_manifest(src), str(src / hnsw.INDEX_FILE))
            expect = [None] * meta.shards if remote is not None else _shard_digests(src, meta.shards)
        ensure_ray()
        if replicas is not None:
            hnsw.validate_layout(shards=meta.shards, replicas=replicas, partition=meta.partition)
            meta = dataclasses.replace(meta, replicas=replicas)
        work, owned = index_actors.make_workdir(workdir)
        actors, pgs, cpus = cls._spawn_or_clean(meta.shards, meta.replicas, work, cpus_per_actor)
        index = cls(meta, actors, work, pgs, owned)
        try:
            loads = [p.load_from.remote(remote or str(src), expect[j]) for j, p in enumerate(index._primaries())]
            stats = wait_counted(loads, f"open {remote or src}", "open index", "shards")
            index._record_sizes(stats)
            index.threads = max(hnsw.threads_for(cpus), index_build.cluster_threads(index.meta))
            index._thread(index._primaries())
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
            if not final.is_dir() or any(p.name != TOKEN for p in final.iterdir()):  # its owner's commit token only
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
            swap_in(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _save_remote(self, uri: str) -> str:
        """Save to an object store: shards upload their own files, the manifest is written last."""
        attempt = index_store.new_attempt(uri)
        entries = wait_counted([p.upload_to.remote(attempt) for p in self._primaries()], f"save {uri}", "save", "shards")
        index_store.commit_index(attempt, self.meta.to_json(), entries)
        return uri

    def _write_files(self, directory: Path) -> None:
        dest = sink.destination(directory)  # a stage output on a store: its attempt prefix (core/storage/sink.py)
        if store.is_uri(dest):  # each shard uploads its own files from its node; the stage's manifest lists them
            entries = wait_counted([p.upload_to.remote(dest) for p in self._primaries()], f"save {dest}", "save", "shards")
            sink.record({store.join(dest, rel): entry for rel, entry in shard.items()} for shard in entries)
        else:
            wait_counted([p.save_to.remote(str(directory)) for p in self._primaries()], f"save {directory}", "save", "shards")
        write_json_atomic(directory / hnsw.INDEX_FILE, self.meta.to_json())

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
        source, where, trusted = index_build.prepare_source(source, validate)
        prim = self._primaries()
        metas, data, id_refs = index_build.route_new_rows(prim, self.meta, plan_shards(source, len(prim)), where, trusted)
        raykit.wait_all([p.check_ids.remote([row[j] for row in id_refs], where) for j, p in enumerate(prim)], "check ids")
        all_ids = [ref for row in id_refs for ref in row]
        for shard, hit in enumerate(raykit.wait_all([p.contains.remote(all_ids) for p in prim], "check ids")):
            if hit is not None:
                raise DataError(f"{where}: id {hit} is already in the index (shard {shard})")
        calls = [a.add.remote([row[j] for row in data]) for j, reps in enumerate(self.actors) for a in reps]
        raykit.wait_all(calls, "add")
        self._record_sizes(raykit.wait_all([p.stats.remote() for p in prim], "stats"))
        return int(sum(m["rows"] for m in metas))

    def _fresh_ids(self, n: int) -> np.ndarray:
        """n ids no row of this index has ever had (so a deleted id is never silently revived)."""
        high = max(s["id_high"] for s in raykit.wait_all([p.stats.remote() for p in self._primaries()], "stats"))
        return np.arange(high + 1, high + 1 + n, dtype=np.int64)

    def delete(self, ids: Sequence[int] | np.ndarray) -> int:
        """Delete ids (unknown ids are ignored); returns how many were deleted."""
        ids = np.unique(np.asarray(ids, np.int64).reshape(-1))
        shards = len(self.actors)
        if self.meta.partition == "hash":
            owner = hnsw.hash_shard(ids, shards)
            parts = [ids[owner == j] for j in range(shards)]
        else:
            parts = [ids] * shards
        done = raykit.wait_all([a.delete.remote(parts[j]) for j, reps in enumerate(self.actors) for a in reps if parts[j].size], "delete")
        self._record_sizes(raykit.wait_all([p.stats.remote() for p in self._primaries()], "stats"))
        return int(sum(done) // len(self.actors[0]))

    # ------------------------------------------------------------------ search

    @property
    def dim(self) -> int:
        return int(self.meta.dim or 0)

    def __len__(self) -> int:
        return int(self.meta.live)

    def search(
        self,
        queries: Any,
        k: int = DEFAULT_SEARCH.k,
        ef: int = DEFAULT_SEARCH.ef,
        nprobe: int | None = DEFAULT_SEARCH.nprobe,
        allow_ids: Sequence[int] | np.ndarray | None = None,
        allow_partial: bool = False,
        batch_size: int | None = None,
    ) -> SearchResult:
        """k nearest neighbours of each query: (q, k) int64 ids and float32 distances, -1/+inf padded.

        `batch_size`: query rows per shard call; None (the default) sends each replica of a shard one share.
        """
        q = index_search.as_query_array(queries, self.dim)
        spec = SearchSpec(k, ef, nprobe)  # the keywords, checked here once
        if batch_size is not None:
            validate.integer("batch_size", batch_size)
        return self.search_spec(q, spec, spec.probes(len(self), len(self.actors)), allow_ids, allow_partial, batch_size)

    def search_spec(
        self, q: np.ndarray, spec: SearchSpec, nprobe: int, allow_ids: Sequence[int] | np.ndarray | None = None,
        allow_partial: bool = False, batch_size: int | None = None,
    ) -> SearchResult:
        """`search` with checked settings: `q` a float32 (q, dim) array, `spec` fitted to this index (`nprobe`
        its `probes`). Nothing is checked again, so a stream's blocks are not re-validated one by one."""
        shards, k, ef = len(self.actors), spec.k, spec.ef
        allow_ref = None if allow_ids is None else ray.put(np.unique(np.asarray(allow_ids, np.int64)))
        batch_size = hnsw.search_batch(len(q), len(self.actors[0]), batch_size)
        tasks = index_search.plan_tasks(q, index_search.shard_members(self.router, q, nprobe, shards), batch_size)
        calls = [index_search.ReplicaCall(t.shard, (t.payload, k, ef, allow_ref, self.exact_threshold), t.turn) for t in tasks]
        answers = self._call_replicas("search", calls, allow_partial)
        answered = [(t.start, t.stop, t.rows, a) for t, a in zip(tasks, answers) if a is not None]
        ids, dists = hnsw_results.merge_batches(len(q), k, answered)
        return SearchResult(ids, dists, len(answered) / len(tasks) if tasks else 1.0)

    def _call_replicas(self, method: str, calls: Sequence[index_search.ReplicaCall], allow_partial: bool) -> list[Any]:
        """index_search.call_replicas, each search starting its round-robin one replica further."""
        timeout = self.replica_timeout if len(self.actors[0]) > 1 else None
        offset, self._rr = self._rr, self._rr + 1
        return index_search.call_replicas(self.actors, method, calls, allow_partial, timeout, offset)

    def search_dataset(
        self, source: Any, out: str | os.PathLike, *, k: int = DEFAULT_SEARCH.k, ef: int = DEFAULT_SEARCH.ef,
        nprobe: int | None = DEFAULT_SEARCH.nprobe,
        block_size: int = 8192, pool: int = 2, overwrite: bool = False, id_column: str = "id",
        vector_column: str = "vector",
    ) -> dict[str, Any]:
        """Answer a query source of any size (Parquet file, directory, URI or ray.data.Dataset with an id and
        a vector column: `id_column`, `vector_column`) block by block on Ray Data, writing knn-graph rows
        (`id`, `neighbors`, `distances`) as Parquet parts into directory `out`.

        Neither all queries nor all answers are ever held in one process (workers/query_stream.py). A
        non-empty `out` is refused unless it holds an earlier query's answers and `overwrite` is set.
        """
        settings = query_stream.QuerySettings(SearchSpec(k, ef, nprobe), block_size, pool, Columns(id_column, vector_column))
        return query_stream.search_dataset(self, source, out, settings, overwrite=overwrite)

    def set_threads(self, threads: int) -> None:
        """hnswlib threads of every shard actor (a restarted actor goes back to its reserved CPUs)."""
        self.threads = threads
        raykit.wait_all([a.set_threads.remote(threads) for row in self.actors for a in row], "set threads")

    # ------------------------------------------------------------------ the all-points kNN graph

    def knn_graph(
        self, out_dir: str | os.PathLike, k: int = DEFAULT_SEARCH.k, ef: int = DEFAULT_SEARCH.ef,
        nprobe: int | None = DEFAULT_SEARCH.nprobe, batch_size: int = graph_units.BATCH, in_flight: int | None = None, *, built_from: Source | None = None,
    ) -> dict[str, Any]:
        """Write docs/design.md's knn-graph table (every live point, self excluded) as Parquet parts in `out_dir`.

        Batches of each shard's points are answered whole by every (probed) shard; the owning shard
        merges, drops self and writes its part; at most `in_flight` batches (default two per shard) are
        in flight. A batch that loses an actor is retried after the actor restarts (workers/knn_graph.py).
        `built_from`: the vectors this index holds exactly (its build's source, no rows added or deleted
        since); batches are then read from it rather than copied out of hnswlib point by point.
        """
        shards, spec = len(self.actors), SearchSpec(k, ef, nprobe)
        k, ef, nprobe = spec.k, spec.ef, spec.probes(max(len(self) - 1, 0), shards)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        router = self.meta.router if nprobe < shards else None
        req = graph_units.GraphRequest(k, ef, nprobe, router, batch_size, Path(out_dir))
        rows = None if built_from is None else self._rows_of(built_from, batch_size)
        units = graph_units.units_of(list(self.meta.shard_sizes), batch_size, rows)
        return {"rows": int(graph_units.run(self.actors, units, req, in_flight)), "parts": len(units), "k": k}

    def _rows_of(self, built_from: Source, batch_size: int) -> list[ShardSpec]:
        """`built_from` in row ranges of at most `batch_size`; it must hold as many rows as the index."""
        total = sum(s.num_rows for s in plan_shards(built_from, 1))
        if total != len(self):
            where = os.fspath(built_from) if isinstance(built_from, str | os.PathLike) else "built_from"
            raise ConfigError(f"{where}: holds {total:,} rows but the index holds {len(self):,} live points; "
                              f"pass the vectors it was built from, or no built_from")
        return plan_shards(built_from, hnsw.ceil_div(total, batch_size))

    # ------------------------------------------------------------------ introspection and lifetime

    def stats(self) -> dict[str, Any]:
        """Sizes per shard (live, deleted, bytes), balance, placement and memory of every replica."""
        replicas = raykit.wait_all([a.stats.remote() for row in self.actors for a in row], "stats")
        sizes = [r["live"] for r in replicas if r["replica"] == 0]
        return {
            "dim": self.dim,
            "space": self.meta.space,
            "partition": self.meta.partition,
            "params": dataclasses.asdict(self.meta.params) if self.meta.params is not None else None,
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
