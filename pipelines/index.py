"""The index pipeline: ingest → build a sharded HNSW index → all-points kNN graph → recall evaluation.

    shardwalk run index --set source=builtin:mnist5k            # shards and threads sized to the cluster
    shardwalk run index --set source=data/ --set shards=8        # an explicit shard count wins
    shardwalk run index --set knn_graph.method=hnsw             # the graph through the HNSW index (before 0.x)
    shardwalk run index --set hnsw=false                         # the kNN graph only: no HNSW build
    shardwalk query runs/cache/build-<key> --queries queries/ -k 10 --out answers/   # streamed, any size
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from shardwalk.core import progress
from shardwalk.core.dag.cache_key import InputPath
from shardwalk.core.dag.runner import Pipeline
from shardwalk.core.data.schema import Columns, apply_columns, to_numpy, validate_vectors
from shardwalk.core.errors import ConfigError
from shardwalk.core.index import hnsw
from shardwalk.core.index.graph_settings import GraphSettings
from shardwalk.core.index.hnsw_results import knn_graph_table
from shardwalk.core.index.spec import BUILD_KEYS, DEFAULT_BUILD, DEFAULT_SEARCH, BuildSpec, IndexSpec
from shardwalk.core.plan import calibration
from shardwalk.core.plan import cost_model as cm
from shardwalk.core.storage import sink
from shardwalk.core.storage.files import atomic_file, write_parquet
from shardwalk.core.storage.sources import plan_shards, read_shard, read_table
from shardwalk.pipelines.common import COLUMN_DEFAULTS, ingest_stage
from shardwalk.pipelines.plan import source_size
from shardwalk.pipelines.reports.stage import index_report
from shardwalk.workers.cluster import cluster_nodes
from shardwalk.workers.index_eval import exact_part, sample_part
from shardwalk.workers.progress_channel import Channel, targeting, wait_counted
from shardwalk.workers.query_stream import QuerySettings, open_for_stream
from shardwalk.workers.sharded_index import ShardedIndex

log = logging.getLogger("shardwalk")

DEFAULTS: dict[str, Any] = {
    "source": InputPath("builtin:mnist5k"),
    **COLUMN_DEFAULTS,
    "shards": DEFAULT_BUILD.shards,  # 0 = sized to the cluster (core/plan/sizing.py): one shard per node with CPUs, more if memory asks
    "memory_fraction": DEFAULT_BUILD.memory_fraction,  # share of a node's memory its shards may take (sizing and the fit check)
    "space": DEFAULT_BUILD.space,
    "M": DEFAULT_BUILD.M,
    "ef_construction": DEFAULT_BUILD.ef_construction,
    "random_seed": DEFAULT_BUILD.random_seed,
    "partition": DEFAULT_BUILD.partition,
    "replicas": DEFAULT_BUILD.replicas,
    "ef": DEFAULT_SEARCH.ef,
    "k": DEFAULT_SEARCH.k,
    "nprobe": 0,  # k-means partition: shards probed per query; 0 = all
    "hnsw": True,  # false: no HNSW index, the kNN graph only (knn_graph.method must not be hnsw)
    # the all-points kNN graph (core/index/knn_partition.py); `knn_graph = false` skips it
    "knn_graph": {"enabled": True, **GraphSettings().as_params()},
    "recall_sample": 500,
    "seed": 0,
}


def validate(config: dict[str, Any]) -> None:
    """Reject bad values before any stage runs (core/index/spec.py: the spec is built and checked here, once)."""
    IndexSpec.from_config(config)


def _nprobe(nprobe: int) -> int | None:
    return nprobe or None


# ----------------------------------------------------------------------------- stages


def build_index(out: Path, ingest: Path, **build: Any) -> dict[str, Any]:
    """Build the sharded index from the ingested parts and save it as this stage's output.

    `build` holds the BuildSpec's fields (the stage's cache key): the spec is rebuilt from them here, once.
    """
    spec = BuildSpec(**build)
    with ShardedIndex.build_spec(str(ingest), spec, validate=False) as index:  # the ingest stage validated the parts
        index.save(out, atomic=False)
        stats = index.stats()
        return {
            "live": stats["live"],
            "dim": stats["dim"],
            "shard_sizes": stats["shard_sizes"],
            "balanced_within_2x": stats["balanced_within_2x"],
            "build_seconds": round(index.meta.build_seconds, 3),
            "index_bytes": stats["index_bytes"],
            "shards": stats["shards"],
            "threads_per_actor": [a["threads"] for a in stats["actors"] if a["replica"] == 0],
        }


def knn_graph(out: Path, build: Path, ingest: Path, *, k: int, ef: int, nprobe: int) -> dict[str, Any]:
    """Every point's k nearest neighbours (self excluded), written by the shard actors as Parquet parts;
    the points are read from the ingest parts the index was built from."""
    with ShardedIndex.open(build) as index:
        return index.knn_graph(out, k=k, ef=ef, nprobe=_nprobe(nprobe), built_from=sink.readable(ingest))


def knn_graph_direct(out: Path, ingest: Path, *, k: int, space: str, method: str, partition_rows: int, overlap: int,
                     refine_rounds: int, refine_min_rate: float, block: int, seed: int) -> dict[str, Any]:
    """Every point's k nearest neighbours without an index: partitions of the ingest parts, a local graph
    on each partition's actor, merged and refined (workers/knn_partition.py)."""
    # numba (~0.15 CPU-s to import, ~0.8 s more on a first kernel call): only this stage needs it, not every
    # process that runs an index stage
    from shardwalk.workers.knn_partition import build_graph

    settings = GraphSettings(method=method, partition_rows=partition_rows, overlap=overlap,
                             refine_rounds=refine_rounds, refine_min_rate=refine_min_rate, block=block, seed=seed)
    return build_graph(sink.readable(ingest), str(out), k=k, settings=settings, space=space)


PRICED_BUILD_KEYS = ("shards", "replicas", "M", "ef_construction", "memory_fraction")  # what prices the index's queries


def knn_graph_auto(out: Path, ingest: Path, build: Path | None = None, *, k: int, ef: int, nprobe: int, space: str,
                   index: dict[str, Any], **graph: Any) -> dict[str, Any]:
    """`knn_graph.method = auto`: of the methods expected to reach recall 0.95, the one the cost model
    (core/plan/cost_model.py: pick_graph_method) prices fastest on this cluster for these rows; the index's
    own queries compete only when the run builds it (`build` given). Metrics: the method run and the prices."""
    rows, dim, _ = source_size(str(sink.readable(ingest)))
    settings = GraphSettings(**graph)
    job = cm.IndexJob(rows, dim or 1, ef=ef, k=k, nprobe=nprobe, hnsw=build is not None, graph=settings,
                      **{key: index[key] for key in PRICED_BUILD_KEYS})
    plan = cm.plan_index(job, cm.Cluster(tuple(cluster_nodes())), calibration.load())
    method = plan.layout.get("graph_method") or cm.graph_method(dataclasses.replace(job, graph=dataclasses.replace(
        settings, method="partition")))  # a layout the plan refuses: the index-free default
    priced = plan.layout.get("graph_stage_seconds_by_method", {})
    log.info("knn graph: auto chose %s (priced seconds %s)", method, priced)
    if method == "hnsw":
        result = knn_graph(out, build, ingest, k=k, ef=ef, nprobe=nprobe)
    else:
        result = knn_graph_direct(out, ingest, k=k, space=space, **{**graph, "method": method})
    return {**result, "method": method, "auto_priced_seconds": priced}


GRAPH_RECALL_TARGET = 0.95  # below this the evaluation carries a warning


def graph_recall(graph: Path, q_ids: np.ndarray, truth: np.ndarray, k: int) -> dict[str, Any]:
    """Recall@k of the graph's rows for the sampled ids, and a warning when under GRAPH_RECALL_TARGET."""
    rows = pq.read_table(graph, filters=pc.field("id").isin(pa.array(q_ids))).to_pydict()
    graph_nbrs = dict(zip(rows["id"], rows["neighbors"]))
    got = np.array([graph_nbrs[i][:k] for i in q_ids.tolist()], np.int64)
    recall = hnsw.recall_at_k(got, truth)
    result: dict[str, Any] = {"graph_recall_at_k": recall}
    if recall < GRAPH_RECALL_TARGET:
        result["graph_recall_warning"] = (f"graph recall@{k} {recall:.3f} is below {GRAPH_RECALL_TARGET}: "
                                          "raise knn_graph.overlap, partition_rows or refine_rounds")
        log.warning("knn graph: %s", result["graph_recall_warning"])
    return result


def evaluate(out: Path, ingest: Path, build: Path | None = None, graph: Path | None = None, *, k: int, ef: int,
             nprobe: int, recall_sample: int, seed: int, space: str = "l2") -> dict[str, Any]:
    """Recall@k of search and of the kNN graph against exact search, on a seeded sample of the data."""
    specs = plan_shards(sink.readable(ingest), max(1, len(list(ingest.glob("*.parquet")))))  # tasks on any node
    total = sum(s.num_rows for s in specs)
    fraction = min(1.0, recall_sample / total)
    parts = wait_counted([sample_part.remote(s, fraction, seed) for s in specs], "evaluate", "sample", get=ray.get)
    q_ids = np.concatenate([p[0] for p in parts])
    queries = np.concatenate([p[1] for p in parts])
    sweep = sorted({16, 32, 64, 128, 256, ef})  # the report's recall-vs-ef curve, on the same sample
    found: dict[int, np.ndarray] = {}
    k = min(k, total - 1)
    if build is not None:
        with ShardedIndex.open(build) as index:
            space = index.meta.space
            tracker = progress.Tracker("search sweep", len(sweep), "ef values", "queries")
            for e in sweep:
                found[e] = index.search(queries, k=k + 1, ef=e, nprobe=_nprobe(nprobe)).ids
                tracker.advance(1, len(queries))
    q_ref = ray.put(queries)
    exact = hnsw.merge_results(wait_counted([exact_part.remote(s, q_ref, k + 1, space) for s in specs], "evaluate",
                                            "exact search", rows=[s.num_rows for s in specs], get=ray.get), k + 1)
    result: dict[str, Any] = {"sample": len(q_ids), "k": k, "ef": ef, "nprobe": nprobe}
    if len(q_ids) != min(recall_sample, total):
        result["sample_note"] = sample_note(len(q_ids), recall_sample, total)
    sweep_rows = []
    if found:
        result["search_recall_at_k"] = hnsw.recall_at_k(found[ef][:, :k], exact[0][:, :k])
        sweep_rows = [{"ef": e, "recall_at_k": hnsw.recall_at_k(found[e][:, :k], exact[0][:, :k])} for e in sweep]
    if graph is not None:
        result.update(graph_recall(graph, q_ids, hnsw.drop_self(q_ids, *exact, k)[0], k))
    (out / "recall.json").write_text(json.dumps({**result, "recall_vs_ef": sweep_rows}, indent=1))
    return result


def sample_note(sample: int, recall_sample: int, rows: int) -> str:
    """Why `sample` is not `recall_sample`: each point is kept by a seeded hash of its id (the same points
    whatever the sharding), so the count is recall_sample on average, not exactly."""
    return (f"{sample} points sampled for recall_sample={recall_sample}: each of the {rows:,} points is kept when a "
            f"seeded hash of its id falls below {recall_sample}/{rows:,} (the same sample for any sharding), so "
            "the count varies around recall_sample")


def index_section(config: dict[str, Any]) -> dict[str, Any]:
    """An index config (this pipeline's keys) from another pipeline's section: unnamed keys take DEFAULTS."""
    return {**{k: v for k, v in DEFAULTS.items() if k not in COLUMN_DEFAULTS and k != "source"},
            **{k: config[k] for k in DEFAULTS if k in config}}


def add_index_stages(p: Pipeline, config: dict[str, Any], *, ingest: str = "ingest") -> None:
    """Add `build` (unless `hnsw` is off) and `knn_graph` (when on) from a validated index config."""
    graph = GraphSettings.from_config(config["knn_graph"])
    if config.get("hnsw", True):
        p.stage("build", build_index, inputs={"ingest": ingest}, params={key: config[key] for key in BUILD_KEYS},
                num_cpus=0)
    if not graph.enabled:  # the all-points graph is a third of the job: skip it when only the index is wanted
        return
    if graph.method == "hnsw":
        p.stage("knn_graph", knn_graph, inputs={"build": "build", "ingest": ingest},
                params={"k": config["k"], "ef": config["ef"], "nprobe": config["nprobe"]}, num_cpus=0, declares_rows=True)
    elif graph.method == "auto":  # decided when the rows and the cluster are known; after the build when there is one
        built = {"build": "build"} if config.get("hnsw", True) else {}
        p.stage("knn_graph", knn_graph_auto, inputs={"ingest": ingest, **built}, num_cpus=0, declares_rows=True,
                params={"k": config["k"], "ef": config["ef"], "nprobe": config["nprobe"], "space": config["space"],
                        "index": {key: config[key] for key in PRICED_BUILD_KEYS}, **graph.as_params()})
    else:  # no index needed: the method and its settings are the stage's params (its cache key)
        p.stage("knn_graph", knn_graph_direct, inputs={"ingest": ingest}, num_cpus=0, declares_rows=True,
                params={"k": config["k"], "space": config["space"], **graph.as_params()})


def build(config: dict[str, Any]) -> Pipeline:
    """ingest → build → knn_graph → evaluate (→ report when there is an index)."""
    p = Pipeline("index")
    ingest_stage(p, config, require_label=False)
    add_index_stages(p, config)
    with_graph = {"graph": "knn_graph"} if GraphSettings.from_config(config["knn_graph"]).enabled else {}
    with_build = {"build": "build"} if config.get("hnsw", True) else {}
    p.stage(
        "evaluate",
        evaluate,
        inputs={"ingest": "ingest", **with_build, **with_graph},
        params={key: config[key] for key in ("k", "ef", "nprobe", "recall_sample", "seed", "space")},
        num_cpus=0,
        version="3",
    )
    if with_build:
        p.stage("report", index_report, inputs={"build": "build", "evaluate": "evaluate", **with_graph}, num_cpus=0)
    return p


# ----------------------------------------------------------------------------- `shardwalk query`


SEARCH_FILE = "search.json"  # the search defaults (ef, nprobe, k) exported beside an index
DISTANCES = {"l2": "squared L2", "ip": "1 - inner product", "cosine": "1 - cosine similarity"}


def stream_query(
    index_dir: str | os.PathLike, queries_source: Any, out_dir: str | os.PathLike, *, k: int = DEFAULT_SEARCH.k, ef: int = DEFAULT_SEARCH.ef,
    nprobe: int | None = None, block_size: int = 8192, overwrite: bool = False, columns: Columns = Columns(),
    timings: dict[str, Any] | None = None, progress_to: Channel | None = None,
) -> dict[str, Any]:
    """Answer a query source of any size into a directory of Parquet parts (streamed with Ray Data);
    `timings` receives `open_seconds`, the time to start the shard actors and load the index; the pool
    reports queries answered to `progress_to` (a driver's progress listener), if given."""
    began = time.perf_counter()
    index = open_for_stream(index_dir, QuerySettings().pool)
    if timings is not None:
        timings["open_seconds"] = time.perf_counter() - began
    with index, targeting(progress_to, "query"):
        return index.search_dataset(queries_source, out_dir, k=k, ef=ef, nprobe=nprobe, block_size=block_size,
                                    overwrite=overwrite, id_column=columns.id, vector_column=columns.vector)


def preview_query(index_dir: str | os.PathLike, queries_source: str | os.PathLike, rows: int, *,
                  columns: Columns = Columns(), **search: Any) -> pa.Table:
    """Answers for the first `rows` queries only (what `shardwalk query` prints without --out)."""
    spec = plan_shards(queries_source, 1)[0]
    where = os.fspath(queries_source)
    head = read_shard(dataclasses.replace(spec, stop=min(spec.stop, spec.start + rows)), [columns.id, columns.vector])
    return query_index(index_dir, apply_columns(head, columns, where), where=where, **search)


def query_index(
    index_dir: str | os.PathLike, queries_source: str | os.PathLike, k: int = DEFAULT_SEARCH.k, ef: int = DEFAULT_SEARCH.ef,
    nprobe: int | None = None, out_path: str | os.PathLike | None = None, *, batch_size: int = 256,
    timings: dict[str, Any] | None = None, where: str | None = None,
) -> pa.Table:
    """Search a saved index with a Parquet file of queries; return (and optionally write) a knn-graph table.

    Queries go in batches of `batch_size`; `timings`, when given, receives queries/s and batch latency
    percentiles. For small query tables in memory; a source of any size streams with `stream_query`.
    """
    where = where or ("queries" if isinstance(queries_source, pa.Table) else os.fspath(queries_source))
    began = time.perf_counter()
    with ShardedIndex.open(index_dir) as index:
        opened = time.perf_counter() - began
        table = validate_vectors(read_table(queries_source), where=where, dim=index.dim)
        q_ids, queries = to_numpy(table)
        ids, dists, seconds = _timed_search(index, queries, k, ef, nprobe, batch_size)
        if timings is not None:
            timings.update(search_timings(seconds, len(queries), batch_size), space=index.meta.space, open_seconds=opened)
    result = knn_graph_table(q_ids, ids, dists)
    if out_path is not None:
        with atomic_file(out_path) as tmp:  # a reader sees the old file or the whole new one
            write_parquet(result, tmp)
    return result


def _timed_search(index: ShardedIndex, queries: np.ndarray, k: int, ef: int, nprobe: int | None,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    ids, dists, seconds = [], [], []
    for start in range(0, len(queries), batch_size):
        began = time.perf_counter()
        found = index.search(queries[start:start + batch_size], k=k, ef=ef, nprobe=nprobe)
        seconds.append(time.perf_counter() - began)
        ids.append(found[0])
        dists.append(found[1])
    return np.concatenate(ids), np.concatenate(dists), seconds


def search_timings(seconds: list[float], queries: int, batch_size: int) -> dict[str, Any]:
    """Queries per second over the whole search and percentiles of the per-batch latency (ms)."""
    ms = np.asarray(seconds) * 1000.0
    total = float(np.sum(seconds))
    return {"queries": queries, "batch_size": batch_size, "batches": len(seconds),
            "qps": queries / total if total > 0 else float("inf"),
            **{f"latency_ms_p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}}


def resolve_index(ref: str, runs_dir: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(index directory or URI, its stored search defaults) for a path/URI or a run id, prefix or `latest`."""
    from shardwalk.pipelines.runs_view import load_run_ref

    if "://" in ref or Path(ref).exists():
        stored = Path(ref) / SEARCH_FILE
        if "://" not in ref and stored.is_file():  # an export
            return ref, json.loads(stored.read_text())
        return ref, _defaults_of_cached_index(ref, runs_dir)
    record = load_run_ref(runs_dir, ref)
    stage = record["stages"].get("build")
    if stage is None or stage.get("status") not in ("done", "cached"):
        raise ConfigError(f"run {record['run_id']} has no committed index (no finished 'build' stage)")
    return stage.get("attempt") or stage["output"], search_defaults(record["config"])  # the attempt the run used


def _defaults_of_cached_index(ref: str, runs_dir: str | os.PathLike) -> dict[str, Any]:
    """The search defaults of the newest run whose `build` stage wrote this cache directory, if any."""
    from shardwalk.core.dag.runner import list_runs

    target = os.path.abspath(ref)
    for record in list_runs(runs_dir):
        stage = record.get("stages", {}).get("build") or {}
        if stage.get("output") and os.path.abspath(stage["output"]) == target:
            return search_defaults(record.get("config", {}))
    return {}


def search_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The ef / nprobe / k a pipeline's config searched with (the index pipeline's keys, or the demo's [index])."""
    section = config.get("index", config) if isinstance(config.get("index"), dict) else config
    return {key: section[key] for key in ("ef", "nprobe", "k") if isinstance(section.get(key), int)}
