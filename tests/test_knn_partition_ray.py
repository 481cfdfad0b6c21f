"""The kNN graph without an index on actors (workers/knn_partition.py) and its pipeline wiring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from shardwalk.core.data.schema import from_numpy, validate_knn_graph
from shardwalk.core.index import hnsw
from shardwalk.core.index import knn_partition as kp
from shardwalk.pipelines.cli import main

pytestmark = pytest.mark.ray


def _source(tmp_path: Path, n: int = 2400, dim: int = 16) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(24, dim)).astype(np.float32)
    x = (centres[rng.integers(0, 24, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)
    ids = rng.permutation(n).astype(np.int64) * 7
    src = tmp_path / "src"
    src.mkdir()
    for i, start in enumerate(range(0, n, 1000)):  # three parts
        pq.write_table(from_numpy(x[start:start + 1000], ids=ids[start:start + 1000]), src / f"part-{i}.parquet")
    return src, ids, x


def _graph(out: Path) -> tuple[np.ndarray, np.ndarray]:
    table = validate_knn_graph(pq.read_table(out)).sort_by("id")
    return table.column("id").to_numpy(), np.array(table.column("neighbors").to_pylist())


@pytest.mark.parametrize("actors", [1, 2])
def test_actors_build_the_exact_graph_and_a_partitioned_one_at_recall(ray_local: None, tmp_path: Path, actors: int) -> None:
    from shardwalk.workers.knn_partition import build_graph

    src, ids, x = _source(tmp_path)
    order = np.argsort(ids)
    truth, _ = kp.local_graph(ids[order], x[order], 10)
    exact = build_graph(str(src), str(tmp_path / "exact"), k=10, settings=kp.GraphSettings(method="exact"), actors=actors)
    got_ids, got = _graph(tmp_path / "exact")
    assert exact["rows"] == 2400 and exact["partitions"] == 1
    np.testing.assert_array_equal(got_ids, ids[order])
    np.testing.assert_array_equal(got, truth)
    settings = kp.GraphSettings(partition_rows=400, overlap=2, refine_rounds=1)
    summary = build_graph(str(src), str(tmp_path / "part"), k=10, settings=settings, actors=actors)
    got_ids, got = _graph(tmp_path / "part")
    assert summary["partitions"] == 12 and summary["actors"] == actors
    np.testing.assert_array_equal(got_ids, ids[order])
    assert hnsw.recall_at_k(got, truth) >= 0.95


def test_graph_only_run_without_hnsw_reports_graph_recall(ray_local: None, tmp_path: Path) -> None:
    src, _, _ = _source(tmp_path)
    runs = tmp_path / "runs"
    args = ["run", "index", "--runs-dir", str(runs), "--set", f"source={src}", "--set", "hnsw=false",
            "--set", "knn_graph.method=partition", "--set", "knn_graph.partition_rows=400", "--set", "recall_sample=200"]
    assert main(args) == 0
    record = json.loads(next((runs / "runs").glob("*/run.json")).read_text())
    assert sorted(record["stages"]) == ["evaluate", "ingest", "knn_graph"]
    assert record["stages"]["knn_graph"]["metrics"]["partitions"] == 12
    metrics = record["stages"]["evaluate"]["metrics"]
    assert metrics["graph_recall_at_k"] >= 0.95 and "search_recall_at_k" not in metrics


@pytest.mark.parametrize("sets, needle", [(["knn_graph.method=magic"], "knn_graph.method"),
                                          (["hnsw=false", "knn_graph.method=hnsw"], "hnsw=false"),
                                          (["hnsw=false", "knn_graph=false"], "hnsw=false")])
def test_bad_graph_config_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], sets: list[str], needle: str) -> None:
    args = ["run", "index", "--runs-dir", str(tmp_path)]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    assert needle in capsys.readouterr().err
