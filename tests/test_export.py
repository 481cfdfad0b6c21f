"""`--export` layouts, `shardwalk query` on a run or an export (stored ef, QPS, percentiles), knn_graph = false."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.datasets import load_arrays
from core.errors import ConfigError
from core.schema import from_numpy, validate_knn_graph
from pipelines.cli import main
from tests.report_check import embedded_pngs

SMALL = ["--set", "source=builtin:synthetic?n=400&d=8", "--set", "shards=2", "--set", "M=8",
         "--set", "ef_construction=40", "--set", "recall_sample=50", "--set", "k=5", "--set", "ef=37"]


@pytest.mark.ray
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
    build_dir = json.loads((target / "run.json").read_text())["stages"]["build"]["output"]
    # every way to name the index resolves to it, with its stored ef (the preview path: no Ray Data)
    for ref in (str(target / "index"), "latest", build_dir):
        assert main(["query", ref, "--runs-dir", runs, "--queries", str(queries), "-k", "3"]) == 0
        printed = capsys.readouterr().out
        assert "ef=37" in printed and "p50" in printed and "p99" in printed and "squared L2" in printed
        assert re.findall(r"^\s*\d+\s+(\d+)\s+\[(\d+)", printed, re.M) == [
            (str(i), str(n)) for i, n in zip(range(10, 15), range(5))]  # each query's nearest is itself
    out = tmp_path / "hits.parquet"  # streamed answers (Ray Data), once
    assert main(["query", "latest", "--runs-dir", runs, "--queries", str(queries), "-k", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ef=37" in printed and "queries/s" in printed and "squared L2" in printed
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


def _fake_coreset_run(tmp_path: Path) -> dict:
    """A finished coreset run record whose stage outputs are written here (no Ray needed)."""
    import pyarrow as pa

    ingest, score, select = (tmp_path / "cache" / n for n in ("ingest", "score", "select"))
    for d in (ingest, score, select / "ccs-aum-cb-keep0.5"):
        d.mkdir(parents=True)
    (ingest / "_labels.json").write_text(json.dumps({"column": "cls", "classes": [7, 107], "counts": [2, 2]}))
    pq.write_table(pa.table({"id": pa.array([1, 2, 3, 4], pa.int64()), "label": pa.array([0, 0, 1, 1], pa.int64())}),
                   score / "part-00000.parquet")
    pq.write_table(pa.table({"id": pa.array([1, 3], pa.int64()), "weight": [1.0, 1.0]}),
                   select / "ccs-aum-cb-keep0.5" / "part-00000.parquet")
    stages = {n: {"name": n, "status": "done", "output": str(tmp_path / "cache" / n)} for n in ("ingest", "score", "select")}
    return {"run_id": "r1", "pipeline": "coreset", "config": {}, "status": "succeeded", "stages": stages}


def test_export_to_an_object_store_writes_success_last(tmp_path: Path, monkeypatch) -> None:
    moto = pytest.importorskip("moto.server")
    import pyarrow.fs as pafs

    from pipelines.export import export_run

    server = moto.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "k",
                           "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        fs = pafs.S3FileSystem(endpoint_override=f"http://{host}:{port}", allow_bucket_creation=True)
        fs.create_dir("bucket")
        written = export_run(_fake_coreset_run(tmp_path), tmp_path, "s3://bucket/results")
        assert written == ["coresets/ccs-aum-cb-keep0.5.parquet", "labels.json"]
        table = pq.read_table("bucket/results/coresets/ccs-aum-cb-keep0.5.parquet", filesystem=fs)
        assert table.column("label").to_pylist() == [7, 107]
        with fs.open_input_stream("bucket/results/_SUCCESS") as handle:
            assert json.loads(handle.read())["run_id"] == "r1"
        assert not list(tmp_path.glob(".tmp-export-*"))
        with pytest.raises(ConfigError, match="exists and is not empty"):
            export_run(_fake_coreset_run(tmp_path / "again"), tmp_path, "s3://bucket/results")
    finally:
        server.stop()


def test_local_export_of_a_coreset_run_names_and_labels(tmp_path: Path) -> None:
    from pipelines.export import export_run

    record = _fake_coreset_run(tmp_path)
    export_run(record, tmp_path, f"file://{tmp_path / 'out'}")
    table = pq.read_table(tmp_path / "out" / "coresets" / "ccs-aum-cb-keep0.5.parquet")
    assert table.column_names == ["id", "weight", "label"] and table.column("label").to_pylist() == [7, 107]
    assert json.loads((tmp_path / "out" / "labels.json").read_text())["classes"] == [7, 107]
