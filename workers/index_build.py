"""The driver's side of building and extending an index: read parts on the primaries, route, insert, persist.

Every primary reads its own part; the driver moves only ObjectRefs and small summaries (protocol in
workers/hnsw_actor.py). Routing has one path: `assign` (target shard per row) then `route_chunk`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from shardwalk.core import progress
from shardwalk.core.data import builtin as datasets
from shardwalk.core.data.schema import validate_vectors
from shardwalk.core.errors import DataError, ShardUnavailableError
from shardwalk.core.index import hnsw, index_store
from shardwalk.core.index.index_meta import IndexMeta
from shardwalk.core.index.spec import BuildSpec
from shardwalk.core.plan import sizing
from shardwalk.core.storage.sources import Source, in_memory_table, plan_shards, read_shard
from shardwalk.workers import raykit
from shardwalk.workers.cluster import cluster_nodes
from shardwalk.workers.progress_channel import wait_counted


@dataclass(frozen=True)
class BuildInput:
    """What a build reads and with which hnswlib parameters (dim comes from the data)."""

    specs: tuple[Any, ...]
    where: str
    trusted: bool
    spec: BuildSpec  # checked when it was made: used as it is
    sample_size: int


def prepare_source(source: Source, validate: bool) -> tuple[Source, str, bool]:
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


def plan_layout(source: Source, where: str, spec: BuildSpec) -> sizing.ShardPlan:
    """Shards and CPUs per actor for this source on the connected cluster (an explicit `shards` wins)."""
    specs = plan_shards(source, 1)
    rows = sum(s.num_rows for s in specs)
    first = read_shard(dataclasses.replace(specs[0], stop=specs[0].start + 1))
    if "vector" not in first.column_names:
        raise DataError(f"{where}: missing column(s) ['vector']; found {first.column_names}")
    vector = first.column("vector")
    dim = vector.type.list_size if pa.types.is_fixed_size_list(vector.type) else np.asarray(vector[0].as_py() or []).size
    return sizing.plan(cluster_nodes(), rows, max(dim, 1), spec.M, shards=spec.shards or None, replicas=spec.replicas,
                       memory_fraction=spec.memory_fraction)


def cluster_threads(meta: IndexMeta) -> int:
    """hnswlib threads per shard actor of a saved index on the connected cluster (core/plan/sizing.py's rule:
    a node's CPUs shared by the actors it holds), so a reopened index searches as fast as it was built,
    even when the builder's CPUs were not yet released when it opened."""
    return hnsw.threads_for(sizing.cpus_per_actor(cluster_nodes(), meta.shards * meta.replicas))


def read_parts(
    prim: list[Any], specs: Sequence[Any], where: str, dim: int | None, sample: int, trusted: bool
) -> tuple[list[Any], list[dict[str, Any]], int]:
    """Primary i reads (and stages) part i; returns (readers, per-part summaries, the one dimension)."""
    readers = [prim[i % len(prim)] for i in range(len(specs))]
    metas = wait_counted([r.read_part.remote(s, sample, 0, where, dim, trusted) for r, s in zip(readers, specs)],
                         "read input", "read input", rows=[s.num_rows for s in specs])
    dims = {m["dim"] for m in metas if m["rows"]}
    if not dims:
        raise DataError(f"{where}: input is empty (0 rows)")
    if len(dims) > 1:
        first = next(m for m in metas if m["rows"])
        other = next(m for m in metas if m["rows"] and m["dim"] != first["dim"])
        raise DataError(f"{where}: dimension differs between shards: rows from {other['start']} have {other['dim']}, rows from {first['start']} have {first['dim']}")
    return readers, metas, dim if dim is not None else dims.pop()


def _router(metas: list[dict[str, Any]], meta: IndexMeta, shards: int, space: str) -> dict[str, Any] | None:
    """The k-means router trained on the readers' samples (None under hash partitioning)."""
    if meta.partition != "kmeans":
        return None
    samples = [m["sample"] for m in metas if m["sample"] is not None and len(m["sample"])]
    return hnsw.train_router(np.concatenate(samples), shards, space).to_json()


def build_shards(prim: list[Any], meta: IndexMeta, inp: BuildInput) -> tuple[IndexMeta, list[dict[str, Any]]]:
    """Read, route and insert every part into fresh shards; returns the new meta and the shards' stats."""
    sample = hnsw.ceil_div(inp.sample_size, len(inp.specs)) if meta.partition == "kmeans" else 0
    readers, metas, dim = read_parts(prim, inp.specs, inp.where, None, sample, inp.trusted)
    router = _router(metas, meta, len(prim), inp.spec.space)
    params = inp.spec.params(dim)
    assigned = raykit.wait_all([r.assign.remote(len(prim), router) for r in readers], "route input")
    if meta.partition != "hash":  # hash routing already puts all copies of an id in one shard
        raykit.wait_all([p.check_ids.remote([ids[j] for _, ids in assigned], inp.where) for j, p in enumerate(prim)], "check ids")
    capacity = np.sum([counts for counts, _ in assigned], axis=0)
    started = time.perf_counter()
    raykit.wait_all([p.begin_build.remote(int(capacity[j]), asdict(params)) for j, p in enumerate(prim)], "build shards")
    stream_pieces(prim, readers, hnsw.route_chunks(max(m["rows"] for m in metas)), sum(m["rows"] for m in metas))
    stats = raykit.wait_all([p.finish_build.remote(inp.where) for p in prim], "build shards")
    built = dataclasses.replace(meta, space=inp.spec.space, dim=dim, params=params, router=router,
                                build_seconds=time.perf_counter() - started)
    return built, stats


def stream_pieces(prim: list[Any], readers: Sequence[Any], chunks: int, rows: int = 0) -> None:
    """Route and insert chunk by chunk, with one chunk in flight behind the one being inserted.

    Actor calls run in submission order, so a primary routes its chunk c before inserting chunk c; the
    driver drops chunk c's pieces (owned by it: they are call results) as soon as they are inserted.
    Progress: chunks inserted of `chunks`, and about `rows / chunks` rows each (a chunk is a share of
    every part).
    """
    inflight: list[list[Any]] = []
    tracker = progress.Tracker("insert", chunks, "chunks", "rows")

    def inserted() -> None:
        raykit.wait_all(inflight[0], "insert pieces")
        del inflight[0]
        tracker.advance(1, rows * (tracker.done + 1) // chunks - rows * tracker.done // chunks)

    try:
        for chunk in range(chunks):
            routed = [r.route_chunk.options(num_returns=len(prim)).remote(chunk, chunks) for r in readers]
            routed = [row if len(prim) > 1 else [row] for row in routed]
            inflight.append([p.add_pieces.remote(*[row[j] for row in routed]) for j, p in enumerate(prim)])
            if len(inflight) == 2:
                inserted()
        while inflight:
            inserted()
    except ShardUnavailableError:
        raykit.collect_quietly([ref for refs in inflight for ref in refs])
        raise


def route_new_rows(
    prim: list[Any], meta: IndexMeta, specs: Sequence[Any], where: str, trusted: bool
) -> tuple[list[dict[str, Any]], list[list[Any]], list[list[Any]]]:
    """Read rows to add and route them whole (one chunk, nothing kept back: every replica inserts them).

    Returns (per-part summaries, piece refs [reader][shard], id refs [reader][hash bucket]).
    """
    shards = len(prim)
    readers, metas, _ = read_parts(prim, specs, where, meta.dim, 0, trusted)
    assigned = raykit.wait_all([r.assign.remote(shards, meta.router, True) for r in readers], "route input")
    routed = [r.route_chunk.options(num_returns=shards).remote(0, 1, False) for r in readers]
    return metas, [row if shards > 1 else [row] for row in routed], [ids for _, ids in assigned]
