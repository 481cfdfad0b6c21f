"""The index pipeline: ingest → build a sharded HNSW index → all-points kNN graph → recall evaluation.

    shardwalk run index --set source=builtin:mnist5k            # shards and threads sized to the cluster
    shardwalk run index --set source=data/ --set shards=8        # an explicit shard count wins
    shardwalk query runs/cache/build-<key> --queries queries/ -k 10 --out answers/   # streamed, any size
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from core import hnsw
from core.dag import Pipeline
from core.errors import ConfigError
from core.io import plan_shards, read_shard, read_table, source_fingerprint, write_parquet
from core.schema import KNN_GRAPH_SCHEMA, to_numpy, validate_vectors
from pipelines.common import ingest
from workers.hnsw_shard import ShardedIndex, exact_part, sample_part
from workers.query_stream import QuerySettings, open_for_stream

DEFAULTS: dict[str, Any] = {
    "source": "builtin:mnist5k",
    "shards": 0,  # 0 = sized to the cluster (core/sizing.py): one shard per node with CPUs, more if memory asks
    "memory_fraction": 0.5,  # share of a node's memory its shards may take (sizing and the fit check)
    "space": "l2",
    "M": 16,
    "ef_construction": 200,
    "random_seed": 100,
    "partition": "hash",
    "replicas": 1,
    "ef": 64,
    "k": 10,
    "nprobe": 0,  # k-means partition: shards probed per query; 0 = all
    "recall_sample": 500,
    "seed": 0,
}


def validate(config: dict[str, Any]) -> None:
    """Reject bad values before any stage runs."""
    shards = config["shards"]
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 0:
        raise ConfigError(f"shards must be an integer >= 1, or 0 to size it to the cluster; got {shards!r}")
    hnsw.validate_layout(shards=shards or 1, replicas=config["replicas"], partition=config["partition"])
    fraction = config["memory_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ConfigError(f"memory_fraction must be in (0, 1], got {fraction!r}")
    hnsw.validate_params(
        dim=1, space=config["space"], M=config["M"], ef_construction=config["ef_construction"],
        random_seed=config["random_seed"],
    )
    for key in ("k", "ef", "recall_sample"):
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {config[key]!r}")
    if config["nprobe"] and not shards:
        raise ConfigError("nprobe must be 0 (all shards) unless shards is set explicitly (shards=0 sizes the index to the cluster)")
    if config["nprobe"] < 0 or (shards and config["nprobe"] > shards):
        raise ConfigError(f"nprobe must be in [0, shards={config['shards']}] (0 = all), got {config['nprobe']}")


def _nprobe(nprobe: int) -> int | None:
    return nprobe or None


# ----------------------------------------------------------------------------- stages


def ingest_parts(out: Path, *, shards: int, **params: Any) -> dict[str, Any]:
    """The ingest stage; `shards=0` (sized to the cluster) writes one part per cluster CPU."""
    return ingest(out, shards=shards or max(1, int(ray.cluster_resources().get("CPU", 1))), **params)


def build_index(
    out: Path, ingest: Path, *, shards: int, space: str, M: int, ef_construction: int, random_seed: int,
    partition: str, replicas: int, memory_fraction: float = 0.5,
) -> dict[str, Any]:
    """Build the sharded index from the ingested parts and save it as this stage's output."""
    with ShardedIndex.build(
        str(ingest), shards=shards or None, space=space, M=M, ef_construction=ef_construction, partition=partition,
        replicas=replicas, random_seed=random_seed, validate=False,  # the ingest stage validated the parts
        memory_fraction=memory_fraction,
    ) as index:
        index.save(out, atomic=False)
        stats = index.stats()
        return {
            "live": stats["live"],
            "dim": stats["dim"],
            "shard_sizes": stats["shard_sizes"],
            "balanced_within_2x": stats["balanced_within_2x"],
            "build_seconds": round(index.meta["build_seconds"], 3),
            "index_bytes": stats["index_bytes"],
            "shards": stats["shards"],
            "threads_per_actor": [a["threads"] for a in stats["actors"] if a["replica"] == 0],
        }


def knn_graph(out: Path, build: Path, *, k: int, ef: int, nprobe: int) -> dict[str, Any]:
    """Every point's k nearest neighbours (self excluded), written by the shard actors as Parquet parts."""
    with ShardedIndex.open(build) as index:
        return index.knn_graph(out, k=k, ef=ef, nprobe=_nprobe(nprobe))


def evaluate(out: Path, ingest: Path, build: Path, graph: Path, *, k: int, ef: int, nprobe: int, recall_sample: int, seed: int) -> dict[str, Any]:
    """Recall@k of search and of the kNN graph against exact search, on a seeded sample of the data."""
    specs = plan_shards(ingest, max(1, len(list(ingest.glob("*.parquet")))))
    total = sum(s.num_rows for s in specs)
    fraction = min(1.0, recall_sample / total)
    parts = ray.get([sample_part.remote(s, fraction, seed) for s in specs])
    q_ids = np.concatenate([p[0] for p in parts])
    queries = np.concatenate([p[1] for p in parts])
    with ShardedIndex.open(build) as index:
        space = index.meta["space"]
        k = min(k, len(index) - 1)
        found = index.search(queries, k=k + 1, ef=ef, nprobe=_nprobe(nprobe))
    q_ref = ray.put(queries)
    exact = hnsw.merge_results(ray.get([exact_part.remote(s, q_ref, k + 1, space) for s in specs]), k + 1)
    search_recall = hnsw.recall_at_k(found.ids[:, :k], exact[0][:, :k])
    truth = hnsw.drop_self(q_ids, *exact, k)[0]
    rows = pq.read_table(graph, filters=pc.field("id").isin(pa.array(q_ids))).to_pydict()
    graph_nbrs = dict(zip(rows["id"], rows["neighbors"]))
    got = np.array([graph_nbrs[i][:k] for i in q_ids.tolist()], np.int64)
    result = {
        "sample": len(q_ids),
        "k": k,
        "ef": ef,
        "nprobe": nprobe,
        "search_recall_at_k": search_recall,
        "graph_recall_at_k": hnsw.recall_at_k(got, truth),
    }
    (out / "recall.json").write_text(json.dumps(result, indent=1))
    return result


def build(config: dict[str, Any]) -> Pipeline:
    """ingest → build → knn_graph → evaluate."""
    p = Pipeline("index")
    p.stage(
        "ingest",
        ingest if config["shards"] else ingest_parts,  # an explicit count shares the ingest pipeline's cache
        params={"source": config["source"], "shards": config["shards"], "require_label": False,
                "fingerprint": source_fingerprint(config["source"])},
        num_cpus=0,
    )
    p.stage(
        "build",
        build_index,
        inputs=["ingest"],
        params={key: config[key] for key in ("shards", "space", "M", "ef_construction", "random_seed", "partition", "replicas",
                                             "memory_fraction")},
        num_cpus=0,
    )
    p.stage("knn_graph", knn_graph, inputs={"build": "build"},
            params={"k": config["k"], "ef": config["ef"], "nprobe": config["nprobe"]}, num_cpus=0)
    p.stage(
        "evaluate",
        evaluate,
        inputs={"ingest": "ingest", "build": "build", "graph": "knn_graph"},
        params={key: config[key] for key in ("k", "ef", "nprobe", "recall_sample", "seed")},
        num_cpus=0,
    )
    return p


# ----------------------------------------------------------------------------- `shardwalk query`


def stream_query(
    index_dir: str | os.PathLike, queries_source: Any, out_dir: str | os.PathLike, *, k: int = 10, ef: int = 64,
    nprobe: int | None = None, block_size: int = 8192,
) -> dict[str, Any]:
    """Answer a query source of any size into a directory of Parquet parts (streamed with Ray Data)."""
    index = open_for_stream(index_dir, QuerySettings().pool)
    with index:
        return index.search_dataset(queries_source, out_dir, k=k, ef=ef, nprobe=nprobe, block_size=block_size)


def preview_query(index_dir: str | os.PathLike, queries_source: str | os.PathLike, rows: int, **search: Any) -> pa.Table:
    """Answers for the first `rows` queries only (what `shardwalk query` prints without --out)."""
    spec = plan_shards(queries_source, 1)[0]
    head = read_shard(dataclasses.replace(spec, stop=min(spec.stop, spec.start + rows)))
    return query_index(index_dir, head, **search)


def query_index(
    index_dir: str | os.PathLike, queries_source: str | os.PathLike, k: int = 10, ef: int = 64,
    nprobe: int | None = None, out_path: str | os.PathLike | None = None,
) -> pa.Table:
    """Search a saved index with a small query table or file, all in memory (streams: `stream_query`)."""
    where = "queries" if isinstance(queries_source, pa.Table) else os.fspath(queries_source)
    with ShardedIndex.open(index_dir) as index:
        table = validate_vectors(read_table(queries_source), where=where, dim=index.dim)
        q_ids, queries = to_numpy(table)
        ids, dists = index.search(queries, k=k, ef=ef, nprobe=nprobe)
    offsets = pa.array(np.arange(0, ids.size + 1, k, dtype=np.int32))
    result = pa.table(
        [pa.array(q_ids), pa.ListArray.from_arrays(offsets, pa.array(ids.reshape(-1))),
         pa.ListArray.from_arrays(offsets, pa.array(dists.reshape(-1), pa.float32()))],
        schema=KNN_GRAPH_SCHEMA,
    )
    if out_path is not None:
        final = Path(out_path)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}")
        write_parquet(result, tmp)
        os.replace(tmp, final)  # a reader sees the old file or the whole new one
    return result
