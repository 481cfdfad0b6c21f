"""Streaming batch queries: a query source of any size → answers written as Parquet parts.

Engine: Ray Data. The source (Parquet file, directory, URI or a ray.data.Dataset) is read in blocks by
read tasks; `map_batches` runs `search_blocks` tasks (at most `pool` at a time, fractional CPUs: they mostly
wait for the shard actors) that hold handles to the shard actors, send each block to every (probed)
shard, merge (shardwalk.core.index.hnsw) and emit knn-graph rows; `write_parquet` writes them from the workers. The driver
holds only object refs and counters: neither all queries nor all answers are ever in one process.

`out` is what a user reads, so it holds exactly one complete result: a non-empty `out` is refused unless
it holds an earlier query's answers and `overwrite` is set. The answers are written into a temporary sibling
of the output directory, which is swapped into place with a manifest (`_SUCCESS`: files, rows, checksums)
once every block is written: a failed or interrupted query leaves the earlier answers as they were. On an
object store (no rename) the answers go to an attempt in a hidden sibling prefix `.<name>.shardwalk-attempts/`
(outside what a reader of `out` lists): Ray Data's write tasks put the parts there, a task per part (on the
workers, never the driver) hashes it, and the sealed manifest is written last (core/storage/store.py's commit
protocol). Then the attempt is published: `out/_SUCCESS` is removed first, the earlier parts deleted, the
new ones copied in server-side and `out/_SUCCESS` written last; the attempt is dropped once published.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from shardwalk.core import errors, progress
from shardwalk.core.data.schema import Columns
from shardwalk.core.errors import ConfigError, DataError, InputError
from shardwalk.core.index.hnsw_results import knn_graph_table
from shardwalk.core.index.spec import DEFAULT_SEARCH, SearchSpec
from shardwalk.core.plan import sizing
from shardwalk.core.storage import node_cache, publish, store
from shardwalk.core.storage.files import MANIFEST, build_manifest, write_parquet
from shardwalk.core.storage.sources import ShardSpec, plan_shards, read_shard
from shardwalk.workers import progress_channel
from shardwalk.workers.cluster import cluster_nodes
from shardwalk.workers.quiet import quiet_ray_data
from shardwalk.workers.ray_datasets import check_columns, is_ray_dataset

POOL_ACTOR_CPUS = 0.25  # a search task mostly waits for shard actors; read tasks need the CPUs left over
KIND = "query-answers"
DIRECT_ROWS = 8192  # a source of at most one block of this many rows is answered without Ray Data
STAGING = ".shardwalk-attempts"  # `<parent>/.<name>.shardwalk-attempts/`: a store query's attempts, beside `out`


@dataclass(frozen=True)
class QuerySettings:
    """How to answer a stream: neighbours, search breadth, shards probed, rows per block, search tasks at a time."""

    search: SearchSpec = DEFAULT_SEARCH  # k, ef, nprobe: checked when it was made
    block_size: int = 8192
    pool: int = 2
    columns: Columns = field(default_factory=Columns)  # the query source's id and vector columns (`id_column`, `vector_column`)

    def validate(self) -> QuerySettings:
        for name in ("block_size", "pool"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        return self

    @property
    def k(self) -> int:
        return self.search.k

    @property
    def ef(self) -> int:
        return self.search.ef

    @property
    def nprobe(self) -> int | None:
        return self.search.nprobe


def query_vectors(batch: dict[str, np.ndarray], dim: int, where: str,
                  columns: Columns = Columns()) -> tuple[np.ndarray, np.ndarray]:
    """(ids, float32 (n, dim) vectors) of a Ray Data block, or DataError naming the problem."""
    ids = np.asarray(batch[columns.id])
    vecs = np.asarray(batch[columns.vector])
    if vecs.dtype == object:  # variable-length lists arrive as arrays of arrays
        sizes = {np.asarray(v).size for v in vecs}
        if sizes - {dim}:
            raise DataError(f"{where}: column 'vector' has dimension {sorted(sizes - {dim})[0]}, expected {dim}")
        vecs = np.stack([np.asarray(v) for v in vecs]) if len(vecs) else np.empty((0, dim))
    if vecs.ndim != 2 or vecs.shape[1] != dim:
        raise DataError(f"{where}: column 'vector' has dimension {vecs.shape[-1] if vecs.ndim else 0}, expected {dim}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"{where}: column 'id' must be integers, got {ids.dtype}")
    vecs = np.ascontiguousarray(vecs, np.float32)
    bad = ~np.isfinite(vecs).all(axis=1)
    if bad.any():
        raise DataError(f"{where}: NaN or inf in the vector of id {int(ids[np.flatnonzero(bad)[0]])}")
    return ids.astype(np.int64, copy=False), vecs


@functools.cache
def _handle_class() -> type:
    """ShardedIndex for a handle inside a search task: closing it frees nothing (the driver owns the actors)."""
    from shardwalk.workers.sharded_index import ShardedIndex  # imports this module

    class _Handle(ShardedIndex):
        def _register_cleanup(self) -> weakref.finalize:
            return weakref.finalize(self, lambda: None)

    return _Handle


_ANSWERED: dict[str, int] = {}  # progress token → queries this worker process answered (its tasks reuse it)
_SENDERS: dict[str, progress_channel.Sender] = {}


def search_blocks(batch: dict[str, np.ndarray], meta: Any, actors: list[list[Any]], settings: QuerySettings,
                  where: str, nprobe: int, report: tuple[Any, str, int | None] | None = None) -> pa.Table:
    """A task of the stream: one block's answers from the shard actors (each block starts its replica
    round-robin at a different replica), its queries counted towards `report` (channel, stage, total)."""
    index = _handle_class()(meta, actors, Path("."), [], False)
    ids, vecs = query_vectors(batch, index.dim, where, settings.columns)
    if meta.space == "cosine":
        zero = np.linalg.norm(vecs, axis=1) == 0
        if zero.any():
            raise DataError(f"{where}: the vector of id {int(ids[np.flatnonzero(zero)[0]])} is zero (cosine space)")
    index._rr = int(ids[0]) if len(ids) else 0
    result = index.search_spec(vecs, settings.search, nprobe, batch_size=max(len(vecs), 1))  # checked once, by `search_dataset`
    if report is not None:
        _count_answered(report, len(ids))
    return knn_graph_table(ids, result.ids, result.dists)


def _count_answered(report: tuple[Any, str, int | None], answered: int) -> None:
    """Add to this process's count of queries answered and send it (summed with other processes' by the display)."""
    channel, stage, total = report
    if channel.token not in _SENDERS:
        _SENDERS[channel.token] = progress_channel.Sender(channel, stage, progress_channel.new_sender())
    _ANSWERED[channel.token] = _ANSWERED.get(channel.token, 0) + answered
    _SENDERS[channel.token](progress.Update("answer", _ANSWERED[channel.token], total, "queries"))


def open_for_stream(path: str | os.PathLike, pool: int) -> Any:
    """Open a saved index for streaming: its shard actors reserve what the pool and read tasks leave.

    Each shard actor still runs its node's CPUs as hnswlib threads (core/plan/sizing.py): the reservation only
    keeps Ray Data's read tasks schedulable (an actor pool that takes every CPU starves them and hangs).
    """
    from shardwalk.core.index import hnsw, index_store
    from shardwalk.workers.sharded_index import ShardedIndex

    remote = index_store.store_uri_of(path)
    with node_cache.holding():
        if remote is not None:  # pinned: the shards open this attempt, whatever commits meanwhile
            path, src = index_store.open_attempt(remote)
        else:
            src = Path(path)
        shards = hnsw.read_index_manifest(src)["shards"]
    free = float(ray.available_resources().get("CPU", 0.0))
    reserve = max(0.0, free - 1.0 - pool * POOL_ACTOR_CPUS) / shards
    index = ShardedIndex.open(path, cpus_per_actor=math.floor(reserve * 1000) / 1000)
    try:
        threads = sizing.plan(cluster_nodes(), 1, index.dim, 2, shards=shards).threads
        index.set_threads(threads)
    except BaseException:
        index.close()
        raise
    return index


def check_query_source(source: Any, columns: Columns = Columns(), dim: int | None = None) -> None:
    """The query source's id and vector columns (and dimension), from its footer: no Ray, no index needed."""
    from shardwalk.core.data.schema import check_vector_columns
    from shardwalk.core.storage.sources import source_schema

    if is_ray_dataset(source):
        check_columns(source, (columns.id, columns.vector))
        return
    check_vector_columns(source_schema(source), columns, os.fspath(source), dim=dim)


def _dataset(source: Any, dim: int, columns: Columns = Columns()) -> tuple[Any, str]:
    """The source as a ray.data.Dataset of its id and vector columns, checked against the index dimension up front."""
    wanted = [columns.id, columns.vector]
    if is_ray_dataset(source):
        check_columns(source, tuple(wanted))
        dataset, where = source.select_columns(wanted), "ray.data.Dataset"
    else:
        where = os.fspath(source)
        check_query_source(source, columns, dim)
        try:
            # absolute: the read tasks run in the workers' folder (a `ray start` cluster's), not the driver's
            path = where if store.is_remote(where) else str(store.local_path(where))
            dataset = ray.data.read_parquet(path).select_columns(wanted)  # Ray Data pushes the projection down
        except (FileNotFoundError, OSError, pa.ArrowInvalid, ValueError) as exc:
            raise DataError(f"{where}: cannot read the queries ({' '.join(str(exc).split())[:200]})") from None
    schema = dataset.schema()
    typ = schema.base_schema.field(columns.vector).type if schema is not None else None
    # fixed_size_list (Parquet) or Ray's tensor extension (arrays): the dimension is in the type
    found = typ.list_size if typ is not None and pa.types.is_fixed_size_list(typ) else getattr(typ, "shape", (dim,))[-1:]
    found = found[0] if isinstance(found, tuple) and found else found
    if isinstance(found, int) and found != dim:
        raise DataError(f"{where}: column '{columns.vector}' has dimension {found}, expected {dim}")
    return dataset, where


def search_dataset(index: Any, source: Any, out: str | os.PathLike, settings: QuerySettings, *,
                   overwrite: bool = False) -> dict[str, Any]:
    """Stream `source` through `index` into Parquet parts under `out`; returns rows, parts and throughput."""
    settings.validate()
    quiet_ray_data()
    check_query_source(source, settings.columns, index.dim)  # a wrong column name: before any work
    check_out(out, overwrite)
    nprobe = settings.search.probes(len(index), len(index.actors))
    writer = _answer_writer(index, source, settings, nprobe)
    if store.is_remote(os.fspath(out)):
        return _search_to_store(index, writer, os.fspath(out), settings, overwrite)
    final = _output_dir(out, overwrite)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:12]}"
    started = time.perf_counter()
    try:
        writer.write(str(tmp))
        rows, parts = _commit(tmp, final, settings, overwrite)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        typed = _typed_cause(exc)
        if typed is not None:
            raise typed from None
        raise
    seconds = time.perf_counter() - started
    return {"rows": rows, "parts": parts, "seconds": seconds, "queries_per_second": rows / seconds if seconds else 0.0,
            "out": str(final), "space": index.meta.space, "streamed": writer.streamed}


@dataclass(frozen=True)
class _AnswerWriter:
    """Writes a source's answers as Parquet parts into a new directory or store prefix (`write(dest)`): streamed
    by Ray Data, or, for a source of one block or less, read, searched and written by the caller's process (Ray
    Data's start-up costs seconds, which a first query of a few rows would spend almost all of its time in)."""

    streamed: bool
    write: Callable[[str], None]


def _answer_writer(index: Any, source: Any, settings: QuerySettings, nprobe: int) -> _AnswerWriter:
    whole = None if is_ray_dataset(source) else plan_shards(source, 1)[0]  # its footers, read once
    report = _report_to(None if whole is None else whole.num_rows)
    block = whole if whole is not None and whole.num_rows <= min(settings.block_size, DIRECT_ROWS) else None
    if block is not None:
        where = os.fspath(source)
        return _AnswerWriter(False, functools.partial(_write_block, index, block, settings, where, nprobe, report))
    _require_stream_cpus(source, settings)
    dataset, where = _dataset(source, index.dim, settings.columns)
    return _AnswerWriter(True, lambda dest: _answers(index, dataset, settings, where, nprobe, report).write_parquet(dest))


def _require_stream_cpus(source: Any, settings: QuerySettings) -> None:
    """The pool's tasks need their CPUs, and reading a Parquet source a whole one: without them Ray Data would
    wait forever (as it did on a freshly built index whose shard actors hold every CPU)."""
    needed = settings.pool * POOL_ACTOR_CPUS + (0.0 if is_ray_dataset(source) else 1.0)
    free = _free_cpus(needed)
    if free < needed:
        raise ConfigError(
            f"search_dataset needs {needed:g} free CPUs for Ray Data's pool and read tasks, but the shard actors "
            f"leave {free:g}: open the index for streaming (`shardwalk query --out`, or "
            "ShardedIndex.open(path, cpus_per_actor=...) with fewer CPUs per actor)")


def _write_block(index: Any, block: ShardSpec, settings: QuerySettings, where: str, nprobe: int,
                 report: tuple[Any, str, int | None] | None, dest: str) -> None:
    """One block's answers, searched from this process by the same function a streaming task runs."""
    table = read_shard(block, [settings.columns.id, settings.columns.vector])
    batch = {name: table.column(name).to_numpy() for name in table.column_names}  # lists: arrays of arrays
    answers = search_blocks(batch, index.meta, index.actors, settings, where, nprobe, report)
    name = "part-00000.parquet"
    if store.is_remote(dest):
        sink = pa.BufferOutputStream()
        pq.write_table(answers, sink, compression="zstd", write_page_checksum=True)
        store.write_bytes(store.join(dest, name), sink.getvalue().to_pybytes())
    else:
        Path(dest).mkdir()  # a new temporary directory (write_parquet never recreates a vanished one)
        write_parquet(answers, Path(dest) / name)


def _report_to(total: int | None) -> tuple[Any, str, int | None] | None:
    """Where the pool reports queries answered (this context's progress target) and of how many (a Parquet
    source's rows from its footers; None for a Ray Dataset, whose count would run it)."""
    where = progress_channel.target()
    return None if where is None else (*where, total)


def _answers(index: Any, dataset: Any, settings: QuerySettings, where: str, nprobe: int,
             report: tuple[Any, str, int | None] | None = None) -> Any:
    """The lazy dataset of answers: `search_blocks` tasks, at most `settings.pool` at a time (reporting to
    `report`, if any). Tasks, not an actor pool: a failed block is retried by Ray Data, no pool starts up, and
    Ray's core logs nothing about restarting actors whose constructor arguments sit in the object store."""
    return dataset.map_batches(
        search_blocks, fn_args=(index.meta, index.actors, settings, where, nprobe, report),
        batch_size=settings.block_size, batch_format="numpy", num_cpus=POOL_ACTOR_CPUS,
        compute=ray.data.TaskPoolStrategy(size=settings.pool),
    )


def _search_to_store(index: Any, writer: _AnswerWriter, out: str, settings: QuerySettings,
                     overwrite: bool) -> dict[str, Any]:
    """`search_dataset` into an object store: parts into a new attempt beside `out`, hashed on workers (here,
    for one block written from here), manifest last; then published at `out`."""
    _store_out(out, overwrite)
    attempt = store.join(_staging(out), store.ATTEMPTS, store.new_attempt_id())
    started = time.perf_counter()
    try:
        writer.write(attempt)
        listed = sorted(i.base_name for i in store.list_dir(attempt) if i.base_name.endswith(".parquet"))
        uris = [store.join(attempt, name) for name in listed]
        entries = ray.get([_describe.remote(u) for u in uris]) if writer.streamed else [store.describe_object(u) for u in uris]
    except BaseException as exc:
        store.delete_prefix(attempt)  # nothing committed: gc would remove it too
        typed = _typed_cause(exc)
        if typed is not None:
            raise typed from None
        raise
    files = dict(zip(listed, entries))
    rows = sum(e["rows"] for e in entries)
    manifest = {"kind": KIND, "rows": rows, "schemas": sorted({e.pop("schema") for e in entries}), "files": files,
                "k": settings.k, "ef": settings.ef, "nprobe": settings.nprobe, "attempt": attempt, "committed_at": time.time()}
    manifest = store.seal(manifest)
    store.write_json(store.join(attempt, MANIFEST), manifest)
    _publish_answers(store.Committed(attempt, manifest), out, _store_out(out, overwrite))
    seconds = time.perf_counter() - started
    return {"rows": rows, "parts": len(files), "seconds": seconds, "queries_per_second": rows / seconds if seconds else 0.0,
            "out": out, "space": index.meta.space, "streamed": writer.streamed}


_describe = ray.remote(num_cpus=0)(store.describe_object)  # hashing runs where Ray places it, not in the driver


def _free_cpus(needed: float, wait_s: float = 10.0) -> float:
    """The cluster's free CPUs, waiting a little for actors just killed (a closed index) to give theirs back."""
    deadline = time.monotonic() + wait_s
    free = float(ray.available_resources().get("CPU", 0.0))
    while free < needed and time.monotonic() < deadline:
        time.sleep(0.2)
        free = float(ray.available_resources().get("CPU", 0.0))
    return free


def check_out(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an output location before any work: a bad URI, a bucket root, a file, anything non-empty but an
    earlier query's answers, and those without `overwrite`."""
    if store.is_remote(os.fspath(out)):
        _store_out(os.fspath(out), overwrite)
    else:
        _output_dir(out, overwrite)


def _output_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """The output directory: new, empty, or an earlier query's answers (with `overwrite`); anything else is refused."""
    final = store.local_path(out)
    if final.exists():
        if not final.is_dir():
            raise ConfigError(f"{final}: exists and is not a directory; the answers are written as a directory of Parquet parts")
        if any(final.iterdir()):
            if not _is_answers(final):
                raise ConfigError(f"{final}: exists and is not an earlier query's answers; refusing to overwrite")
            if not overwrite:
                raise ConfigError(f"{final}: holds an earlier query's answers; pass --overwrite to replace them")
    return final


def _is_answers(directory: Path) -> bool:
    """An earlier query's answers and nothing else: its manifest lists every file in the directory."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        listed = set(manifest["files"]) if manifest.get("kind") == KIND else None
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return False
    found = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()} - {MANIFEST}
    return listed is not None and found <= listed


def _staging(out: str) -> str:
    """The hidden sibling of `out` that holds its attempts (a reader of `out` never lists it)."""
    base, sep, query = out.partition("?")
    parent, _, name = base.rstrip("/").rpartition("/")
    return f"{parent}/.{name}{STAGING}{sep}{query}"


def _objects(uri: str) -> list[str]:
    """The names of every object under a store prefix, relative to it."""
    fs, root = store.resolve(uri)
    root = root.rstrip("/")
    with store.store_errors(uri):
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.path[len(root) + 1:] for i in infos if i.type == pafs.FileType.File)


def _store_out(out: str, overwrite: bool) -> list[str]:
    """The objects under a store `out` to replace (an earlier query's); refuses anything else, or them without
    `overwrite`."""
    store.check_runs_dir(out, what="--out")
    if publish.is_bucket_root(out):
        raise ConfigError(f"{out}: a bucket root is never a query's --out; name a prefix in it")
    found = _objects(out)
    if not found:
        return []
    foreign = [rel for rel in found if rel not in _answer_objects(out)]
    if foreign:
        raise ConfigError(f"{out}: holds {foreign[0]}, which is not an earlier query's answers; refusing to overwrite")
    if not overwrite:
        raise ConfigError(f"{out}: holds an earlier query's answers; pass --overwrite to replace them")
    return found


def _answer_objects(out: str) -> set[str]:
    """Names under `out` an earlier query wrote: its published parts and manifest, the parts of an interrupted
    publish (named by its attempt beside `out`), or an older release's `attempts/<id>/`."""
    ours: set[str] = set()
    for c in store.committed_attempts(out):
        if c.manifest.get("kind") == KIND:
            own = c.uri.partition("?")[0].rstrip("/") == out.partition("?")[0].rstrip("/")
            prefix = "" if own else f"{store.ATTEMPTS}/{c.uri.partition('?')[0].rstrip('/').rpartition('/')[2]}/"
            ours |= {prefix + rel for rel in [*c.manifest["files"], MANIFEST]}
    for c in store.committed_attempts(_staging(out)):
        if c.manifest.get("kind") == KIND:
            ours |= set(c.manifest["files"])
    return ours


def _publish_answers(c: store.Committed, out: str, earlier: list[str]) -> None:
    """Replace the answers at `out` with the committed attempt `c`: the old manifest goes first, the new last."""
    fs, root = store.resolve(out)
    root = root.rstrip("/")
    with store.store_errors(out):
        for rel in sorted(earlier, key=lambda rel: rel != MANIFEST):  # from here on `out` claims no result
            fs.delete_file(f"{root}/{rel}")
    files = {}
    for rel, entry in c.manifest["files"].items():
        store.copy_object(c, rel, store.join(out, rel))  # server-side when unchanged since the commit
        files[rel] = {k: v for k, v in entry.items() if k != "etag"}
        store.stamp(files[rel], store.join(out, rel))
    body = {k: v for k, v in c.manifest.items() if k != "seal"}
    store.write_json(store.join(out, MANIFEST), store.seal({**body, "files": files, "attempt": out,
                                                            "published_from": c.uri, "committed_at": time.time()}))
    store.delete_prefix(_staging(out))


def _commit(tmp: Path, final: Path, settings: QuerySettings, overwrite: bool) -> tuple[int, int]:
    """Manifest (files, rows, checksums), then swap `tmp` into place; returns (rows, parts)."""
    tmp.mkdir(parents=True, exist_ok=True)
    parts = sorted(tmp.glob("*.parquet"))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    extra = {"kind": KIND, "rows": rows, "k": settings.k, "ef": settings.ef, "nprobe": settings.nprobe}
    (tmp / MANIFEST).write_text(json.dumps(build_manifest(tmp, extra), indent=1, sort_keys=True))
    _output_dir(final, overwrite)  # nothing but earlier answers arrived there meanwhile
    publish.swap_dir(tmp, final)
    return rows, len(parts)


def _typed_cause(exc: BaseException) -> InputError | None:
    """Our typed error inside Ray Data's wrappers (UDF errors arrive as RayTaskError / UserCodeException)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, InputError):
            return err
        stack.extend([err.__cause__, err.__context__, getattr(err, "cause", None)])
    # Ray Data re-raises a UDF's error as UserCodeException with the original only in the text
    found = re.findall(r"core\.errors\.(\w+): ([^\n]+)", str(exc))
    if found and isinstance(cls := getattr(errors, found[-1][0], None), type) and issubclass(cls, InputError):
        return cls(found[-1][1].strip())
    return None
