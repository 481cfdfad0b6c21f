"""A simulated cluster whose nodes each have their own scratch and download cache, runs dir on the S3 server.

Every node's SHARDWALK_SCRATCH and SHARDWALK_LOCAL_CACHE point to a directory of its own, marked as that
node's (core/storage/sink.py): a worker handed a path inside another node's scratch or cache fails, as it would on
a real cluster without shared disk. The index, coreset and srrw pipelines run there with their runs dir in
the bucket, and their outputs must equal a run whose every worker sees one disk (a local runs dir).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from shardwalk.core.storage import node_cache, store

pytestmark = pytest.mark.multinode

PIPELINES: dict[str, list[str]] = {
    "index": ["source=builtin:digits", "shards=2", "k=5", "recall_sample=100", "ef_construction=100", "replicas=1"],
    # a fixed β: what differs without shared disk is where stages read and write, not how β is chosen (β tuning's
    # fits are evaluation tasks, as the evaluate stage's are: tests/test_coreset_trust.py tunes β)
    "coreset": ["source=builtin:digits", "actors=2", "proxy.epochs=2", "proxy.hidden=16", "select.keep=[0.5]",
                "evaluate.steps=40", "evaluate.hidden=16", "evaluate.seeds=1", "select.beta=0.1",
                "select.methods=['ccs-el2n','random','ccs-knn_density']", "knn.enabled=true",
                "knn.k=5", "knn.ef_construction=50"],
    "srrw": ["steps=1500", "checkpoint_every=500", "record_every=250", "standardize=true"],
}
# the one-disk reference runs only what is compared (the kNN side of coreset is checked against exact search)
REFERENCE: dict[str, list[str]] = {
    "coreset": [*PIPELINES["coreset"][:9], "select.methods=['ccs-el2n','random']"],
    "srrw": PIPELINES["srrw"],
}


def _run(pipeline: str, runs_dir: str, address: str, settings: list[str]) -> dict[str, Any]:
    from shardwalk.core.dag.runner import list_runs
    from shardwalk.pipelines.cli import main

    argv = ["run", pipeline, "--runs-dir", runs_dir, "--address", address]
    for setting in settings:
        argv += ["--set", setting]
    assert main(argv) == 0
    return next(r for r in list_runs(runs_dir) if r["pipeline"] == pipeline)["stages"]


def _local(stage: dict[str, Any]) -> Path:
    """A verified local copy of a stage's committed output (a local runs dir's output is one already)."""
    return node_cache.materialize(stage["attempt"])[0] if stage.get("attempt") else Path(stage["output"])


def _files(stage: dict[str, Any]) -> dict[str, Any]:
    from shardwalk.core.storage.files import read_manifest

    manifest = store.require_committed(stage["attempt"]).manifest if stage.get("attempt") else read_manifest(stage["output"])
    return {rel: {k: v for k, v in e.items() if k != "etag"} for rel, e in manifest["files"].items()}  # etag: stores only


def _graph(stage: dict[str, Any]) -> dict[int, list[int]]:
    table = pq.read_table(_local(stage), columns=["id", "neighbors"]).to_pydict()
    return dict(zip(table["id"], table["neighbors"]))


def _selections(stage: dict[str, Any]) -> dict[str, list[int]]:
    from shardwalk.core.coresets.selection_names import read_selection

    root = _local(stage)
    return {p.name: read_selection(p).tolist() for p in sorted(root.iterdir()) if p.is_dir()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, s3_server: str, start_shared_cluster: Callable[[], Any]) -> dict[str, Any]:
    """Every pipeline with its runs dir in the bucket (nodes share nothing); references on one local disk.

    On the session's simulated cluster, whose nodes each have a disk of their own (tests/conftest.py)."""
    import uuid

    import pyarrow.fs as pafs

    from benchmarks.faultkit import node_disk

    bucket = f"multi-{uuid.uuid4().hex[:8]}"
    pafs.S3FileSystem(endpoint_override=s3_server, scheme="http", allow_bucket_creation=True, region="us-east-1").create_dir(bucket)
    cluster = start_shared_cluster()
    out: dict[str, Any] = {"disks": [node_disk(node.node_id) for node in cluster.worker_nodes]}
    for name, settings in PIPELINES.items():
        out[name] = _run(name, f"s3://{bucket}/shardwalk", cluster.address, settings)
    one_disk = tmp_path_factory.mktemp("one-disk")
    for name, settings in REFERENCE.items():
        out[f"{name}-one-disk"] = _run(name, str(one_disk), cluster.address, settings)
    return out


def test_nodes_used_their_own_scratch_and_cache(runs: dict[str, Any]) -> None:
    assert len(runs["disks"]) == 2
    for disk in runs["disks"]:
        assert (disk / "scratch" / ".shardwalk-node").is_file()  # each node's root, marked as its own
    assert any(p.is_dir() for disk in runs["disks"] for p in (disk / "cache").iterdir())


def _exact_graph(vectors: np.ndarray, k: int) -> np.ndarray:
    """Brute-force k nearest neighbours (squared L2, self excluded) of a small table."""
    sq = (vectors * vectors).sum(1)
    dist = sq[:, None] + sq[None, :] - 2 * vectors @ vectors.T
    np.fill_diagonal(dist, np.inf)
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def _agreement(graph: dict[int, list[int]], ids: np.ndarray, vectors: np.ndarray, k: int) -> float:
    exact = ids[_exact_graph(vectors, k)]
    return float(np.mean([len(set(graph[int(i)][:k]) & set(row.tolist())) / k for i, row in zip(ids, exact)]))


def test_index_pipeline_on_nodes_without_shared_disk_equals_one_machine(runs: dict[str, Any]) -> None:
    from shardwalk.core.data.builtin import load_builtin
    from shardwalk.core.data.schema import to_numpy

    got = runs["index"]
    ingested = pq.read_table(_local(got["ingest"])).sort_by("id")
    want = load_builtin("builtin:digits").sort_by("id")
    assert ingested.column("id").equals(want.column("id")) and ingested.column("vector").equals(want.column("vector"))
    assert got["build"]["metrics"]["live"] == 1797
    assert got["evaluate"]["metrics"]["search_recall_at_k"] >= 0.95
    graph = _graph(got["knn_graph"])
    ids, vectors = to_numpy(ingested)
    assert sorted(graph) == ids.tolist()
    assert _agreement(graph, ids, vectors.astype(np.float64), 5) >= 0.95  # what one machine's hnswlib gives too


def test_coreset_pipeline_on_nodes_without_shared_disk_equals_one_disk(runs: dict[str, Any]) -> None:
    got, want = runs["coreset"], runs["coreset-one-disk"]
    assert _files(got["score"]) == _files(want["score"])  # the actors' score parts, bit for bit
    sel_got, sel_want = _selections(got["select"]), _selections(want["select"])
    assert sorted(sel_got) == ["ccs-el2n-keep0.5", "ccs-knn_density-keep0.5", "random-keep0.5"]
    assert sel_got["ccs-el2n-keep0.5"] == sel_want["ccs-el2n-keep0.5"]
    assert sel_got["random-keep0.5"] == sel_want["random-keep0.5"]
    assert got["select"]["metrics"]["beta"]["ccs-el2n-keep0.5"] == want["select"]["metrics"]["beta"]["ccs-el2n-keep0.5"] == 0.1
    accuracy = {name: json.loads((_local(stage["evaluate"]) / "accuracy.json").read_text()) for name, stage in
                (("got", got), ("want", want))}  # models trained by tasks reading the ingest from the bucket
    assert {k: accuracy["got"][k] for k in accuracy["want"]} == accuracy["want"]
    assert len(sel_got["ccs-knn_density-keep0.5"]) == got["select"]["metrics"]["ccs-knn_density-keep0.5"] > 0
    density = pq.read_table(_local(got["density"]))
    assert density.num_rows == got["density"]["metrics"]["rows"] == got["score"]["metrics"]["rows"]  # training rows


def test_srrw_pipeline_on_nodes_without_shared_disk_is_bit_identical(runs: dict[str, Any]) -> None:
    got, want = runs["srrw"], runs["srrw-one-disk"]
    assert _files(got["standardize"]) == _files(want["standardize"])
    walk_got, walk_want = _files(got["walk"]), _files(want["walk"])
    for name in ("tokens.parquet", "trajectory.parquet", "visits.parquet"):
        assert walk_got[name]["sha256"] == walk_want[name]["sha256"]
    assert got["evaluate"]["metrics"]["loss"] == want["evaluate"]["metrics"]["loss"]
