"""A simulated cluster whose nodes each have their own scratch and download cache, runs dir on the S3 server.

Every node's SHARDWALK_SCRATCH and SHARDWALK_LOCAL_CACHE point to a directory of its own, so a stage that
read another node's local files would fail; the outputs must equal a single-machine run's.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core import store

pytestmark = pytest.mark.multinode

INDEX = ["--set", "source=builtin:digits", "--set", "shards=2", "--set", "k=5", "--set", "recall_sample=200",
         "--set", "ef_construction=100", "--set", "replicas=1"]


def _outputs(runs: str) -> dict[str, dict]:
    from core.dag import list_runs

    return {name: s for name, s in list_runs(runs)[0]["stages"].items()}


def _graph(attempt: str, tmp: Path) -> dict[int, list[int]]:
    local, _ = store.materialize(attempt)
    table = pq.read_table(local, columns=["id", "neighbors"]).to_pydict()
    return dict(zip(table["id"], table["neighbors"]))


def test_index_pipeline_on_nodes_without_shared_disk_equals_single_machine(s3_bucket: str, tmp_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.cli import main

    single = f"{s3_bucket}/single"
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for node in range(2):
            env = {"SHARDWALK_SCRATCH": str(tmp_path / f"node{node}" / "scratch"),
                   "SHARDWALK_LOCAL_CACHE": str(tmp_path / f"node{node}" / "cache")}
            cluster.add_node(num_cpus=2, env_vars=env)
        cluster.wait_for_nodes()
        multi = f"{s3_bucket}/multi"
        assert main(["run", "index", "--runs-dir", multi, "--address", cluster.address, *INDEX]) == 0
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert any((tmp_path / "node0" / "cache").iterdir()) or any((tmp_path / "node1" / "cache").iterdir())
    assert main(["run", "index", "--runs-dir", single, *INDEX]) == 0
    ray.shutdown()
    got, want = _outputs(multi), _outputs(single)
    ingest = store.require_committed(got["ingest"]["attempt"]).manifest["files"]
    assert ingest == store.require_committed(want["ingest"]["attempt"]).manifest["files"]  # bit-identical parts
    assert got["build"]["metrics"]["live"] == want["build"]["metrics"]["live"] == 1797
    assert got["evaluate"]["metrics"]["search_recall_at_k"] >= 0.95 and want["evaluate"]["metrics"]["search_recall_at_k"] >= 0.95
    a, b = _graph(got["knn_graph"]["attempt"], tmp_path), _graph(want["knn_graph"]["attempt"], tmp_path)
    assert a.keys() == b.keys()
    same = sum(len(set(a[i]) & set(b[i])) for i in a) / sum(len(b[i]) for i in b)
    assert same >= 0.95  # hnswlib's multi-threaded inserts are not bit-deterministic; the graphs agree
