"""`--export` layouts, `shardwalk query` on a run or an export (stored ef, QPS, percentiles), knn_graph = false."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.datasets import load_arrays
from core.schema import from_numpy, validate_knn_graph
from pipelines.cli import main
from tests.report_check import embedded_pngs

pytestmark = pytest.mark.ray

SMALL = ["--set", "source=builtin:synthetic?n=400&d=8", "--set", "shards=2", "--set", "M=8",
         "--set", "ef_construction=40", "--set", "recall_sample=50", "--set", "k=5", "--set", "ef=37"]


def test_index_export_layout_query_and_refusals(ray_local: None, tmp_path: Path, capsys) -> None:
    runs, target = str(tmp_path / "runs"), tmp_path / "results"
    assert main(["run", "index", "--runs-dir", runs, *SMALL, "--export", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == [
        "_SUCCESS", "index", "knn_graph", "labels.json", "report.html", "run.json"]
    assert embedded_pngs(target / "report.html") >= 3  # recall vs ef, shard balance, memory, distances
    assert json.loads((target / "index" / "search.json").read_text()) == {
        "ef": 37, "nprobe": 0, "k": 5, "space": "l2", "distance": "squared L2"}
    assert validate_knn_graph(pq.read_table(target / "knn_graph")).num_rows == 400

    x, _ = load_arrays("builtin:synthetic?n=400&d=8")
    queries = tmp_path / "q.parquet"
    pq.write_table(from_numpy(x[:5], ids=[10, 11, 12, 13, 14]), queries)
    capsys.readouterr()
    for ref in (str(target / "index"), "latest"):  # the export, or a run reference under --runs-dir
        out = tmp_path / f"hits-{ref.replace('/', '_')}.parquet"
        assert main(["query", ref, "--runs-dir", runs, "--queries", str(queries), "-k", "3", "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "ef=37" in printed and "queries/s" in printed and "p99" in printed and "squared L2" in printed
        assert [row[0] for row in pq.read_table(out).column("neighbors").to_pylist()] == [0, 1, 2, 3, 4]

    # an occupied target is refused before any work, then replaced with --overwrite
    assert main(["run", "index", "--runs-dir", runs, *SMALL, "--export", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--export {target}: exists and is not empty" in err
    assert main(["export", "latest", str(target), "--runs-dir", runs, "--overwrite"]) == 0
    assert (target / "_SUCCESS").is_file() and not list(tmp_path.glob(".tmp-export-*"))

    # knn_graph = false: no graph stage, search recall only
    assert main(["run", "index", "--runs-dir", runs, *SMALL, "--set", "knn_graph=false"]) == 0
    capsys.readouterr()
    assert main(["show", "latest", "--runs-dir", runs, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert list(record["stages"]) == ["ingest", "build", "evaluate", "report"]
    metrics = record["stages"]["evaluate"]["metrics"]
    assert "graph_recall_at_k" not in metrics and metrics["search_recall_at_k"] > 0.5


def test_export_target_that_is_a_file_is_refused(tmp_path: Path) -> None:
    from core.errors import ConfigError
    from pipelines.export import check_target

    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="exists and is a file"):
        check_target(str(tmp_path / "f"), overwrite=True)
    check_target(str(tmp_path / "new"), overwrite=False)  # a missing target is fine
    (tmp_path / "empty").mkdir()
    check_target(str(tmp_path / "empty"), overwrite=False)
