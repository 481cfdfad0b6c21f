"""`--export` layouts, `shardwalk query` on a run or an export (stored ef, QPS, percentiles), knn_graph = false."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from shardwalk.core.data.builtin import load_arrays
from shardwalk.core.data.schema import from_numpy, validate_knn_graph
from shardwalk.core.errors import ConfigError
from shardwalk.core.storage import store
from shardwalk.pipelines.cli import main
from shardwalk.pipelines.export import MARKER
from tests.report_check import embedded_pngs

SMALL = ["--set", "source=builtin:synthetic?n=400&d=8", "--set", "shards=2", "--set", "M=8",
         "--set", "ef_construction=40", "--set", "recall_sample=50", "--set", "k=5", "--set", "ef=37"]


@pytest.mark.ray
def test_index_export_layout_query_and_refusals(ray_local: None, tmp_path: Path, capsys) -> None:
    runs, target = str(tmp_path / "runs"), tmp_path / "results"
    assert main(["run", "index", "--runs-dir", runs, *SMALL, "--export", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == [
        "_SHARDWALK_EXPORT.json", "index", "knn_graph", "labels.json", "report.html", "run.json"]
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
    assert err.count("\n") == 1 and f"export target {target}: exists and is not empty" in err
    assert main(["export", "latest", str(target), "--runs-dir", runs, "--overwrite"]) == 0
    assert (target / MARKER).is_file() and not list(tmp_path.glob(".tmp-export-*")) and not list(tmp_path.glob(".old-*"))

    # knn_graph = false: no graph stage, search recall only
    assert main(["run", "index", "--runs-dir", runs, *SMALL, "--set", "knn_graph=false"]) == 0
    capsys.readouterr()
    assert main(["show", "latest", "--runs-dir", runs, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert list(record["stages"]) == ["ingest", "build", "evaluate", "report"]
    metrics = record["stages"]["evaluate"]["metrics"]
    assert "graph_recall_at_k" not in metrics and metrics["search_recall_at_k"] > 0.5


def test_export_target_that_is_a_file_is_refused(tmp_path: Path) -> None:
    from shardwalk.core.errors import ConfigError
    from shardwalk.pipelines.export import check_target

    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="exists and is a file"):
        check_target(str(tmp_path / "f"), overwrite=True)
    check_target(str(tmp_path / "new"), overwrite=False)  # a missing target is fine
    (tmp_path / "empty").mkdir()
    check_target(str(tmp_path / "empty"), overwrite=False)


def _fake_coreset_run(tmp_path: Path, run_id: str = "r1") -> dict:
    """A finished coreset run record whose stage outputs are written here (no Ray needed)."""
    import pyarrow as pa

    # where the Runner puts them: <runs>/cache/<stage>-<key> (readers re-place a record's outputs there)
    ingest, score, select = (tmp_path / "cache" / f"{n}-{n}key" for n in ("ingest", "score", "select"))
    for d in (ingest, score, select / "ccs-aum-cb-keep0.5"):
        d.mkdir(parents=True)
    (ingest / "_labels.json").write_text(json.dumps({"column": "cls", "classes": [7, 107], "counts": [2, 2]}))
    pq.write_table(pa.table({"id": pa.array([1, 2, 3, 4], pa.int64()), "label": pa.array([0, 0, 1, 1], pa.int64())}),
                   score / "part-00000.parquet")
    pq.write_table(pa.table({"id": pa.array([1, 3], pa.int64()), "weight": [1.0, 1.0]}),
                   select / "ccs-aum-cb-keep0.5" / "part-00000.parquet")
    stages = {n: {"name": n, "key": f"{n}key", "status": "done", "output": str(tmp_path / "cache" / f"{n}-{n}key")}
              for n in ("ingest", "score", "select")}
    return {"run_id": run_id, "pipeline": "coreset", "config": {}, "status": "succeeded", "stages": stages}


def test_local_export_of_a_coreset_run_names_and_labels(tmp_path: Path) -> None:
    from shardwalk.pipelines.export import export_run

    record = _fake_coreset_run(tmp_path)
    export_run(record, tmp_path, f"file://{tmp_path / 'out'}")
    table = pq.read_table(tmp_path / "out" / "coresets" / "ccs-aum-cb-keep0.5.parquet")
    assert table.column_names == ["id", "weight", "label"] and table.column("label").to_pylist() == [7, 107]
    assert json.loads((tmp_path / "out" / "labels.json").read_text())["classes"] == [7, 107]


# ----------------------------------------------------------------------------- what --overwrite may replace


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _foreign_folder(path: Path) -> dict[str, bytes]:
    (path / "data").mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    (path / "data" / "table.csv").write_text("a,b\n1,2\n")
    return _tree(path)


def test_overwrite_onto_a_folder_that_is_not_an_export_is_refused_and_left_alone(tmp_path: Path) -> None:
    from shardwalk.pipelines.export import export_run

    target = tmp_path / "mine"
    before = _foreign_folder(target)
    with pytest.raises(ConfigError, match=f"export target {target}: holds files that are not a shardwalk export"):
        export_run(_fake_coreset_run(tmp_path / "run"), tmp_path, str(target), overwrite=True)
    assert _tree(target) == before and not list(tmp_path.glob(".tmp-export-*"))


def test_overwrite_replaces_an_export_but_not_files_added_to_it(tmp_path: Path) -> None:
    from shardwalk.pipelines.export import export_run

    target = tmp_path / "out"
    export_run(_fake_coreset_run(tmp_path / "a", "r1"), tmp_path, str(target))
    marker = json.loads((target / MARKER).read_text())
    assert marker["run_id"] == "r1" and marker["format"] == "shardwalk-export"
    assert set(marker["files"]) == set(_tree(target)) - {MARKER}  # every file, with its sha256
    export_run(_fake_coreset_run(tmp_path / "b", "r2"), tmp_path, str(target), overwrite=True)
    assert json.loads((target / MARKER).read_text())["run_id"] == "r2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    (target / "notes.txt").write_text("added by hand")
    with pytest.raises(ConfigError, match="holds notes.txt, which its export does not list"):
        export_run(_fake_coreset_run(tmp_path / "c", "r3"), tmp_path, str(target), overwrite=True)
    assert (target / "notes.txt").read_text() == "added by hand"


def _recorded_run(runs: Path, tmp_path: Path) -> str:
    """A succeeded run record under `runs` (its outputs written beside it), as `shardwalk run` leaves one."""
    run_id = "20261206-070000-coreset-ab12cd"
    record = _fake_coreset_run(runs, run_id)
    (runs / "runs" / run_id).mkdir(parents=True)
    (runs / "runs" / run_id / "run.json").write_text(json.dumps(record))
    return run_id


def test_export_onto_the_runs_dir_or_a_folder_holding_it_is_refused(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "work" / "runs"
    run_id = _recorded_run(runs, tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "work")
    before = _tree(tmp_path / "work")
    for target in (tmp_path / "work", tmp_path / "link", runs, runs / "cache" / "x"):
        assert main(["export", run_id, str(target), "--runs-dir", str(runs), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"export target {target}: overlaps the runs dir" in err
    assert _tree(tmp_path / "work") == before
    assert main(["export", run_id, str(tmp_path / "out"), "--runs-dir", str(runs)]) == 0  # elsewhere: fine
    assert json.loads((tmp_path / "out" / MARKER).read_text())["run_id"] == run_id


def _store_tree(uri: str) -> dict[str, bytes]:
    from shardwalk.core.storage import store

    fs, root = store.resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root) + 1:]: store.read_bytes(f"{uri}/{i.path[len(root) + 1:]}")
            for i in infos if i.type == pafs.FileType.File}


def _complete_export(target: str) -> dict:
    """Read the export the documented way (the marker's `current`) and check every file it lists."""
    import hashlib

    from shardwalk.pipelines.export import export_location

    where = export_location(target)
    marker = store.read_json(f"{where}/{MARKER}")
    for rel, entry in marker["files"].items():
        data = store.read_bytes(f"{where}/{rel}")
        assert data is not None and hashlib.sha256(data).hexdigest() == entry["sha256"], rel
    return json.loads(store.read_bytes(f"{where}/run.json"))


def test_a_store_export_is_read_through_its_pointer_and_replaced_by_a_new_version(s3_bucket: str, tmp_path: Path) -> None:
    from shardwalk.pipelines.export import export_run

    target = f"{s3_bucket}/results"
    assert export_run(_fake_coreset_run(tmp_path / "a", "r1"), tmp_path, target) == [
        "coresets/ccs-aum-cb-keep0.5.parquet", "labels.json"]
    assert _complete_export(target)["run_id"] == "r1"
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_run(_fake_coreset_run(tmp_path / "b"), tmp_path, target)
    for run in ("r2", "r3"):
        export_run(_fake_coreset_run(tmp_path / run, run), tmp_path, target, overwrite=True)
        assert _complete_export(target)["run_id"] == run
    versions = {k.split("/")[1] for k in _store_tree(target) if k.startswith("_versions/")}
    assert len(versions) == 2  # the current one and the one it replaced (a reader may still be on it)
    assert not list(tmp_path.glob(".tmp-export-*"))


def test_a_bucket_root_or_a_foreign_prefix_is_never_overwritten(s3_bucket: str, tmp_path: Path) -> None:
    from shardwalk.pipelines.export import export_run

    store.write_bytes(f"{s3_bucket}/sw/runs/x/run.json", b"{}")
    store.write_bytes(f"{s3_bucket}/theirs/notes.txt", b"mine")
    before, run = _store_tree(s3_bucket), _fake_coreset_run(tmp_path)
    for target, why in ((s3_bucket, "a bucket root is never an export target"),
                        (f"{s3_bucket}/", "a bucket root is never an export target"),
                        (f"{s3_bucket}/theirs", "not a shardwalk export")):
        with pytest.raises(ConfigError, match=why):
            export_run(run, tmp_path, target, overwrite=True)
    spelled = f"{s3_bucket}/sw?endpoint_override=127.0.0.1:1&scheme=http"  # another spelling of the same place
    with pytest.raises(ConfigError, match="overlaps the runs dir"):
        export_run(run, tmp_path, spelled, overwrite=True, runs_dir=f"{s3_bucket}/sw/runs")
    assert _store_tree(s3_bucket) == before


@pytest.mark.parametrize("when", ["before the upload", "after the upload"])
def test_an_interrupted_store_overwrite_leaves_the_previous_export_complete(
        s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    from shardwalk.pipelines.export import export_run

    target = f"{s3_bucket}/results"
    export_run(_fake_coreset_run(tmp_path / "a", "r1"), tmp_path, target)
    upload = pafs.copy_files

    def interrupted(*args, **kwargs):  # Ctrl-C while the new files go up (today: after the old ones are gone)
        if when == "after the upload":
            upload(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pafs, "copy_files", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(_fake_coreset_run(tmp_path / "b", "r2"), tmp_path, target, overwrite=True)
    assert f"{MARKER}" in _store_tree(target)  # today's main deleted the old export first: 0 objects were left
    assert _complete_export(target)["run_id"] == "r1"
    monkeypatch.setattr(pafs, "copy_files", upload)
    export_run(_fake_coreset_run(tmp_path / "c", "r3"), tmp_path, target, overwrite=True)  # the next one completes
    assert _complete_export(target)["run_id"] == "r3"
