"""A simulated cluster whose nodes each have their own scratch and download cache, runs dir on the S3 server.

Every node's SHARDWALK_SCRATCH and SHARDWALK_LOCAL_CACHE point to a directory of its own, marked as that
node's (core/sink.py): a worker handed a path inside another node's scratch or cache fails, as it would on
a real cluster without shared disk. The index, coreset and srrw pipelines run there with their runs dir in
the bucket, and their outputs must equal a run whose every worker sees one disk (a local runs dir).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from core import store

pytestmark = pytest.mark.multinode

PIPELINES: dict[str, list[str]] = {
    "index": ["source=builtin:digits", "shards=2", "k=5", "recall_sample=200", "ef_construction=100", "replicas=1"],
    "coreset": ["source=builtin:digits", "shards=2", "proxy.epochs=2", "proxy.hidden=16", "select.rates=[0.5]",
                "select.methods=['ccs-el2n','random','ccs-knn_density']", "evaluate.enabled=false", "knn.enabled=true",
                "knn.k=5", "knn.ef_construction=50"],
    "srrw": ["steps=1500", "checkpoint_every=500", "record_every=250", "standardize=true"],
}


def _run(pipeline: str, runs_dir: str, address: str) -> dict[str, Any]:
    from core.dag import list_runs
    from pipelines.cli import main

    argv = ["run", pipeline, "--runs-dir", runs_dir, "--address", address]
    for setting in PIPELINES[pipeline]:
        argv += ["--set", setting]
    assert main(argv) == 0
    return next(r for r in list_runs(runs_dir) if r["pipeline"] == pipeline)["stages"]


def _local(stage: dict[str, Any]) -> Path:
    """A verified local copy of a stage's committed output (a local runs dir's output is one already)."""
    return store.materialize(stage["attempt"])[0] if stage.get("attempt") else Path(stage["output"])


def _files(stage: dict[str, Any]) -> dict[str, Any]:
    from core.io import read_manifest

    manifest = store.require_committed(stage["attempt"]).manifest if stage.get("attempt") else read_manifest(stage["output"])
    return manifest["files"]


def _graph(stage: dict[str, Any]) -> dict[int, list[int]]:
    table = pq.read_table(_local(stage), columns=["id", "neighbors"]).to_pydict()
    return dict(zip(table["id"], table["neighbors"]))


def _selections(stage: dict[str, Any]) -> dict[str, list[int]]:
    from workers.scorer import read_selection

    root = _local(stage)
    return {p.name: read_selection(p).tolist() for p in sorted(root.iterdir()) if p.is_dir()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, s3_server: str) -> dict[str, Any]:
    """Every pipeline on the cluster twice: runs dir in the bucket (nodes share nothing) and on one local disk."""
    import uuid

    import pyarrow.fs as pafs
    import ray
    from ray.cluster_utils import Cluster

    nodes = tmp_path_factory.mktemp("nodes")
    bucket = f"multi-{uuid.uuid4().hex[:8]}"
    pafs.S3FileSystem(endpoint_override=s3_server, scheme="http", allow_bucket_creation=True, region="us-east-1").create_dir(bucket)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for node in range(2):
            cluster.add_node(num_cpus=2, env_vars={"SHARDWALK_SCRATCH": str(nodes / f"node{node}" / "scratch"),
                                                   "SHARDWALK_LOCAL_CACHE": str(nodes / f"node{node}" / "cache")})
        cluster.wait_for_nodes()
        out = {"nodes": nodes}
        for name in PIPELINES:
            out[name] = (_run(name, f"s3://{bucket}/shardwalk", cluster.address),
                         _run(name, str(nodes / "one-disk"), cluster.address))
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_nodes_used_their_own_scratch_and_cache(runs: dict[str, Any]) -> None:
    nodes = runs["nodes"]
    for node in ("node0", "node1"):
        assert (nodes / node / "scratch" / ".shardwalk-node").is_file()  # each node's root, marked as its own
    assert any(p.is_dir() for n in ("node0", "node1") for p in (nodes / n / "cache").iterdir())


def test_index_pipeline_on_nodes_without_shared_disk_equals_one_disk(runs: dict[str, Any]) -> None:
    got, want = runs["index"]
    assert _files(got["ingest"]) == _files(want["ingest"])  # bit-identical parts
    assert got["build"]["metrics"]["live"] == want["build"]["metrics"]["live"] == 1797
    assert got["evaluate"]["metrics"]["search_recall_at_k"] >= 0.95 and want["evaluate"]["metrics"]["search_recall_at_k"] >= 0.95
    a, b = _graph(got["knn_graph"]), _graph(want["knn_graph"])
    assert a.keys() == b.keys() and len(a) == 1797
    same = sum(len(set(a[i]) & set(b[i])) for i in a) / sum(len(b[i]) for i in b)
    assert same >= 0.95  # hnswlib's multi-threaded inserts are not bit-deterministic; the graphs agree


def test_coreset_pipeline_on_nodes_without_shared_disk_equals_one_disk(runs: dict[str, Any]) -> None:
    got, want = runs["coreset"]
    assert _files(got["score"]) == _files(want["score"])  # the actors' score parts, bit for bit
    sel_got, sel_want = _selections(got["select"]), _selections(want["select"])
    assert sorted(sel_got) == ["ccs-el2n-keep0.5", "ccs-knn_density-keep0.5", "random-keep0.5"]
    assert sel_got["ccs-el2n-keep0.5"] == sel_want["ccs-el2n-keep0.5"]
    assert sel_got["random-keep0.5"] == sel_want["random-keep0.5"]
    dens_got = pq.read_table(_local(got["density"])).sort_by("id")
    dens_want = pq.read_table(_local(want["density"])).sort_by("id")
    assert dens_got.column("id").equals(dens_want.column("id"))
    close = np.isclose(dens_got.column("knn_density").to_numpy(), dens_want.column("knn_density").to_numpy(), rtol=1e-3)
    assert close.mean() >= 0.9  # from two independently built (multi-threaded) graphs


def test_srrw_pipeline_on_nodes_without_shared_disk_is_bit_identical(runs: dict[str, Any]) -> None:
    got, want = runs["srrw"]
    assert _files(got["standardize"]) == _files(want["standardize"])
    walk_got, walk_want = _files(got["walk"]), _files(want["walk"])
    for name in ("tokens.parquet", "trajectory.parquet", "visits.parquet"):
        assert walk_got[name]["sha256"] == walk_want[name]["sha256"]
    assert got["evaluate"]["metrics"]["loss"] == want["evaluate"]["metrics"]["loss"]
