"""The index pipeline: ingest → build a sharded HNSW index → all-points kNN graph → recall evaluation.

    shardwalk run index --set source=builtin:mnist5k --set shards=4
    shardwalk query runs/cache/build-<key> --queries q.parquet -k 10 --out result.parquet
"""

from __future__ import annotations

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
from core.io import plan_shards, read_table, write_parquet
from core.schema import KNN_GRAPH_SCHEMA, to_numpy, validate_vectors
from pipelines.common import COLUMN_DEFAULTS, ingest_stage
from workers.hnsw_shard import ShardedIndex, exact_part, sample_part

DEFAULTS: dict[str, Any] = {
    "source": "builtin:mnist5k",
    **COLUMN_DEFAULTS,
    "shards": 4,
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
    hnsw.validate_layout(shards=config["shards"], replicas=config["replicas"], partition=config["partition"])
    hnsw.validate_params(
        dim=1, space=config["space"], M=config["M"], ef_construction=config["ef_construction"],
        random_seed=config["random_seed"],
    )
    for key in ("k", "ef", "recall_sample"):
        if isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {config[key]!r}")
    if not 0 <= config["nprobe"] <= config["shards"]:
        raise ConfigError(f"nprobe must be in [0, shards={config['shards']}] (0 = all), got {config['nprobe']}")


def _nprobe(nprobe: int) -> int | None:
    return nprobe or None


# ----------------------------------------------------------------------------- stages


def build_index(
    out: Path, ingest: Path, *, shards: int, space: str, M: int, ef_construction: int, random_seed: int,
    partition: str, replicas: int,
) -> dict[str, Any]:
    """Build the sharded index from the ingested parts and save it as this stage's output."""
    with ShardedIndex.build(
        str(ingest), shards=shards, space=space, M=M, ef_construction=ef_construction, partition=partition,
        replicas=replicas, random_seed=random_seed, validate=False,  # the ingest stage validated the parts
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
    ingest_stage(p, config, require_label=False)
    p.stage(
        "build",
        build_index,
        inputs=["ingest"],
        params={key: config[key] for key in ("shards", "space", "M", "ef_construction", "random_seed", "partition", "replicas")},
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


def query_index(
    index_dir: str | os.PathLike, queries_source: str | os.PathLike, k: int = 10, ef: int = 64,
    nprobe: int | None = None, out_path: str | os.PathLike | None = None,
) -> pa.Table:
    """Search a saved index with a Parquet file of queries; return (and optionally write) a knn-graph table."""
    with ShardedIndex.open(index_dir) as index:
        table = validate_vectors(read_table(queries_source), where=os.fspath(queries_source), dim=index.dim)
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
