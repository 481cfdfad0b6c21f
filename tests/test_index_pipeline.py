"""`shardwalk run index` and `shardwalk query` end to end on small real data (scikit-learn digits)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from shardwalk.core.data.builtin import load_arrays
from shardwalk.core.data.schema import from_numpy, validate_knn_graph
from shardwalk.core.errors import ConfigError
from shardwalk.core.index import hnsw
from shardwalk.pipelines import index as index_pipeline
from shardwalk.pipelines.cli import main

pytestmark = pytest.mark.ray


def _run_records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (runs / "runs").glob("*/run.json")]


def test_index_pipeline_and_query(ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    args = ["run", "index", "--runs-dir", str(runs), "--set", "source=builtin:digits", "--set", "shards=2",
            "--set", "k=5", "--set", "recall_sample=200", "--set", "ef_construction=100", "--set", "partition=kmeans"]
    assert main(args) == 0
    assert main(args) == 0  # the rerun is all cache hits
    first, second = sorted(_run_records(runs), key=lambda r: r["started"])
    assert [s["status"] for s in second["stages"].values()] == ["cached"] * 5
    stages = first["stages"]
    assert [s["status"] for s in stages.values()] == ["done"] * 5
    assert stages["build"]["metrics"]["live"] == 1797 and stages["build"]["metrics"]["balanced_within_2x"]
    graph = validate_knn_graph(pq.read_table(stages["knn_graph"]["output"]))
    assert graph.num_rows == 1797
    nbrs = np.array(graph.column("neighbors").to_pylist())
    assert nbrs.shape == (1797, 5) and not (nbrs == graph.column("id").to_numpy()[:, None]).any()
    chosen = stages["knn_graph"]["metrics"]  # knn_graph.method = auto: the cheapest priced candidate ran
    assert chosen["method"] == min(chosen["auto_priced_seconds"], key=chosen["auto_priced_seconds"].get)
    assert set(chosen["auto_priced_seconds"]) <= {"exact", "partition", "hnsw"} and "hnsw" in chosen["auto_priced_seconds"]
    metrics = stages["evaluate"]["metrics"]
    assert metrics["search_recall_at_k"] >= 0.95 and metrics["graph_recall_at_k"] >= 0.95
    assert json.loads((Path(stages["evaluate"]["output"]) / "recall.json").read_text())["k"] == 5
    manifest = hnsw.read_index_manifest(Path(stages["build"]["output"]))
    assert manifest["partition"] == "kmeans" and len(manifest["router"]["centroids"]) == 2

    # `shardwalk query` on the build stage's committed output
    x, _ = load_arrays("builtin:digits")
    queries = tmp_path / "q.parquet"
    pq.write_table(from_numpy(x[:4], ids=[40, 41, 42, 43]), queries)
    out = tmp_path / "result.parquet"
    build_dir = stages["build"]["output"]
    assert main(["query", build_dir, "--queries", str(queries), "-k", "3", "--out", str(out)]) == 0
    result = validate_knn_graph(pq.read_table(out))
    assert result.column("id").to_pylist() == [40, 41, 42, 43]
    assert [row[0] for row in result.column("neighbors").to_pylist()] == [0, 1, 2, 3]  # the point itself
    table = index_pipeline.query_index(build_dir, queries, k=2)
    assert table.num_rows == 4 and len(table.column("neighbors")[0]) == 2

    # bad input to `query`: exit 2, one line, nothing written
    capsys.readouterr()
    bad = tmp_path / "bad.parquet"
    pq.write_table(from_numpy(x[:2, :10]), bad)
    assert main(["query", build_dir, "--queries", str(bad), "-k", "3", "--out", str(tmp_path / "no.parquet")]) == 2
    assert "dimension 10, expected 64" in capsys.readouterr().err
    assert not (tmp_path / "no.parquet").exists()
    assert main(["query", str(tmp_path), "--queries", str(queries)]) == 2
    assert "not a shardwalk index" in capsys.readouterr().err


@pytest.mark.parametrize(
    "key, value, needle",
    [("space", "hamming", "unknown space"), ("k", "0", "k must be"), ("partition", "range", "unknown partition"),
     ("nprobe", "9", "nprobe must be"), ("M", "1", "M must be")],
)
def test_bad_config(key: str, value: str, needle: str) -> None:
    config = {**index_pipeline.DEFAULTS, key: type(index_pipeline.DEFAULTS[key])(value) if key != "space" and key != "partition" else value}
    with pytest.raises(ConfigError, match=needle):
        index_pipeline.validate(config)
