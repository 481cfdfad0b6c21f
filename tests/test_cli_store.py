"""The CLI with `--runs-dir s3://...` on a real S3-compatible server (moto on 127.0.0.1)."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from shardwalk.core.data.builtin import load_builtin
from shardwalk.core.storage import store
from shardwalk.pipelines.cli import main
from tests.test_demo import SMALL

INDEX = ["--set", "source=builtin:digits", "--set", "shards=2", "--set", "k=5", "--set", "recall_sample=200",
         "--set", "ef_construction=100"]


def _records(runs: str) -> list[dict]:
    infos = store.list_dir(f"{runs}/runs")
    return sorted((store.read_json(f"{runs}/runs/{i.base_name}/run.json") for i in infos), key=lambda r: r["started"])


def _run_twice_on_s3(pipeline: str, sets: list[str], runs: str, cwd: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    """Run, check nothing landed locally, rerun (all cache hits), then `runs` and `show` against the bucket."""
    args = ["run", pipeline, "--runs-dir", runs, *sets]
    assert main(args) == 0
    assert not any(cwd.iterdir())  # nothing in a local runs directory
    assert main(args) == 0
    first, second = _records(runs)
    assert all(s["status"] == "done" and s["attempt"].startswith(f"{runs}/cache/") for s in first["stages"].values())
    assert all(s["cache_hit"] and s["attempt"] == first["stages"][n]["attempt"] for n, s in second["stages"].items())
    capsys.readouterr()
    assert main(["runs", "--runs-dir", runs]) == 0
    assert capsys.readouterr().out.count(pipeline) >= 2
    assert main(["show", second["run_id"], "--runs-dir", runs]) == 0
    assert capsys.readouterr().out.count("cache hit") == len(second["stages"])
    return [first, second]


def _query(index_uri: str, tmp_path: Path) -> None:
    queries = tmp_path / "q.parquet"
    pq.write_table(load_builtin("builtin:digits").slice(0, 3), queries)
    assert main(["query", index_uri, "--queries", str(queries), "-k", "2", "--out", str(tmp_path / "hits.parquet")]) == 0
    hits = pq.read_table(tmp_path / "hits.parquet").to_pydict()
    assert [n[0] for n in hits["neighbors"]] == hits["id"]  # each query's nearest neighbour is itself


@pytest.mark.ray
def test_index_pipeline_on_s3_runs_show_query(ray_local: None, s3_bucket: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    runs = f"{s3_bucket}/shardwalk"
    first, _ = _run_twice_on_s3("index", INDEX, runs, work, capsys)
    assert first["stages"]["evaluate"]["metrics"]["search_recall_at_k"] >= 0.95
    report = store.read_bytes(f"{runs}/runs/{first['run_id']}/report.html")
    assert report is not None and b"<section class='run'>" in report and first["run_id"].encode() in report  # the header
    _query(first["stages"]["build"]["output"], tmp_path)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SHARDWALK_S3_DEMO"), reason="~4 min under load; set SHARDWALK_S3_DEMO=1")
def test_demo_on_s3_every_artifact_in_the_bucket(ray_local: None, s3_bucket: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    runs = f"{s3_bucket}/shardwalk"
    first, _ = _run_twice_on_s3("demo", [a for s in SMALL for a in ("--set", s)], runs, work, capsys)
    report = store.read_bytes(f"{runs}/runs/{first['run_id']}/report.html")
    assert report is not None and report.count(b"data:image/png;base64,") >= 5  # the demo report embeds 9 today
    _query(first["stages"]["build"]["output"], tmp_path)


@pytest.mark.parametrize("runs_dir, words", [
    ("ftp://x/y", "unknown storage scheme"), ("s3://no-such-bucket-q/x", "does not exist"), ("s3://b/../x", "'..'"),
])
def test_bad_runs_dir_exits_2_naming_it_and_writes_nothing(s3_server: str, runs_dir: str, words: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "index", "--runs-dir", runs_dir, *INDEX]) == 2
    err = capsys.readouterr().err
    assert words in err and runs_dir in err and len(err.strip().splitlines()) == 1
