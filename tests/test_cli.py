"""The CLI end to end: exit codes, one-line errors, caching across runs, resume after a killed driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.storage.files import MANIFEST, verify_dir
from shardwalk.pipelines.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARDWALK = [sys.executable, "-m", "shardwalk.pipelines.cli"]


def _committed(runs: Path) -> list[str]:
    cache = runs / "cache"
    return sorted(p.name for p in cache.iterdir() if (p / MANIFEST).exists()) if cache.is_dir() else []


def _write_vectors(path: Path, vectors: list, ids: list | None = None) -> Path:
    ids = list(range(len(vectors))) if ids is None else ids
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "vector": pa.array(vectors, pa.list_(pa.float32()))}), path)
    return path


def _bad_sources(tmp: Path) -> dict[str, tuple[str, str]]:
    """name -> (source, expected message fragment); each is a file or directory of Parquet."""
    (tmp / "dups").mkdir()
    _write_vectors(tmp / "dups" / "a.parquet", [[1.0, 2.0]] * 3, [0, 1, 2])
    _write_vectors(tmp / "dups" / "b.parquet", [[1.0, 2.0]] * 3, [3, 1, 4])
    (tmp / "mixed").mkdir()
    _write_vectors(tmp / "mixed" / "a.parquet", [[1.0, 2.0]] * 3)
    _write_vectors(tmp / "mixed" / "b.parquet", [[1.0, 2.0, 3.0]] * 3, [3, 4, 5])
    pq.write_table(pa.table({"key": [1], "vector": pa.array([[1.0]], pa.list_(pa.float32()))}), tmp / "noid.parquet")
    return {
        "nan": (str(_write_vectors(tmp / "nan.parquet", [[1.0, 2.0], [np.nan, 1.0]])), "NaN or inf at row 1"),
        "mixed": (str(tmp / "mixed"), "mixed dimensions"),
        "dups": (str(tmp / "dups"), "duplicate value 1 at row 4"),
        "noid": (str(tmp / "noid.parquet"), "missing column(s) ['id']"),
        "empty": (str(_write_vectors(tmp / "empty.parquet", [])), "empty"),
        "unreadable": (str(tmp / "does-not-exist"), "no such file or directory"),
    }


@pytest.mark.ray
@pytest.mark.parametrize("case", ["nan", "mixed", "dups", "noid", "empty", "unreadable"])
def test_bad_input_exits_2_with_one_line_and_commits_nothing(ray_local, tmp_path, capsys, case) -> None:
    source, needle = _bad_sources(tmp_path)[case]
    runs = tmp_path / "runs"
    code = main(["run", "ingest", "--runs-dir", str(runs), "--set", f"source={source}", "--set", "shards=2"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("shardwalk:")]
    assert code == 2
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert _committed(runs) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "nope=1"], "unknown config key 'nope'"),
        (["--set", "shards=0"], "shards must be in [1, 1024]"),
        (["--config", "{bad}"], "malformed TOML"),
    ],
)
def test_bad_config_exits_2_before_anything_runs(tmp_path, capsys, args, needle) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("source = [unclosed\n")
    args = [a.replace("{bad}", str(bad)) for a in args]
    code = main(["run", "ingest", "--runs-dir", str(tmp_path / "runs"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("shardwalk: ConfigError") and needle in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


def test_unknown_run_id_and_pipeline(tmp_path, capsys) -> None:
    assert main(["show", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert main(["show", "../../etc", "--runs-dir", str(tmp_path)]) == 2
    assert main(["run", "nope", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("shardwalk: ConfigError") for line in err)


@pytest.mark.ray
def test_two_stage_pipeline_on_real_data_caches_and_reruns_downstream_only(ray_local, tmp_path, capsys) -> None:
    runs = str(tmp_path / "runs")
    assert main(["run", "ingest", "--runs-dir", runs, "--set", "source=builtin:digits"]) == 0
    assert main(["run", "ingest", "--runs-dir", runs, "--set", "source=builtin:digits"]) == 0
    assert main(["run", "ingest", "--runs-dir", runs, "--set", "source=builtin:digits", "--set", "shards=3"]) == 0
    records = sorted((json.loads(p.read_text()) for p in (tmp_path / "runs" / "runs").glob("*/run.json")), key=lambda r: r["started"])
    first, second, third = ([s["status"] for s in r["stages"].values()] for r in records)
    assert first == ["done"] * 3 and second == ["cached"] * 3 and third == ["done"] * 3  # ingest, summarise, report
    summary = json.loads((Path(records[0]["stages"]["summarise"]["output"]) / "summary.json").read_text())
    assert summary["rows"] == 1797 and summary["dim"] == 64 and summary["classes"] == 10
    capsys.readouterr()
    assert main(["show", records[1]["run_id"], "--runs-dir", runs]) == 0
    assert "cache hit" in capsys.readouterr().out
    assert main(["runs", "--runs-dir", runs]) == 0
    assert capsys.readouterr().out.count("ingest") >= 3


def _cli(args: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([*SHARDWALK, *args], cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_console_script_bad_input_has_no_traceback(ray_address, tmp_path) -> None:
    source, _ = _bad_sources(tmp_path)["nan"]
    proc = _cli(["run", "ingest", "--runs-dir", str(tmp_path / "runs"), "--set", f"source={source}"], env=ray_address)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("shardwalk:")] == [
        f"shardwalk: stage 'ingest' failed: DataError: {source}: column 'vector' has NaN or inf at row 1"
    ]


@pytest.mark.ray
@pytest.mark.slow
def test_killed_driver_resumes_from_committed_stages(ray_address, tmp_path, capsys) -> None:
    """The driver joins the session's Ray (its workers import `tests.slow_pipeline` from the checkout, where
    the suite runs); the rerun and the clean run are drivers in this process, on the same Ray."""
    runs, markers = tmp_path / "runs", tmp_path / "markers"
    markers.mkdir()
    args = ["run", "tests.slow_pipeline", "--runs-dir", str(runs), "--set", f"marker_dir={markers}"]
    proc = _cli([*args, "--set", "slow_s=120"], env=ray_address, start_new_session=True)
    deadline = time.time() + 240
    while not list(markers.iterdir()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert list(markers.iterdir()), "the slow stage never started"
    os.kill(proc.pid, signal.SIGKILL)  # the driver only; Ray's processes notice their owner died
    proc.communicate(timeout=60)
    assert [name.split("-")[0] for name in _committed(runs)] == ["numbers"]

    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "stage numbers: cache hit" in err and "stage total: done" in err
    (clean_runs := tmp_path / "clean").mkdir()
    assert main(["run", "tests.slow_pipeline", "--runs-dir", str(clean_runs), "--set", f"marker_dir={markers}"]) == 0
    for stage in ("numbers", "total"):
        resumed = next((runs / "cache").glob(f"{stage}-*")) / f"{stage}.parquet"
        fresh = next((clean_runs / "cache").glob(f"{stage}-*")) / f"{stage}.parquet"
        assert resumed.read_bytes() == fresh.read_bytes()
    records = [json.loads(p.read_text()) for p in (runs / "runs").glob("*/run.json")]
    assert sorted(r["status"] for r in records) == ["interrupted", "succeeded"]  # the rerun closed the killed one


@pytest.mark.slow
def test_concurrent_runs_into_one_runs_dir_do_not_interleave(ray_address, tmp_path) -> None:
    runs = tmp_path / "runs"
    args = ["run", "tests.slow_pipeline", "--runs-dir", str(runs), "--set", "rows=5000", "--set", "slow_s=3"]
    procs = [_cli(args, env=ray_address) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    entries = sorted(p.name for p in (runs / "cache").iterdir())
    assert [e.split("-")[0] for e in entries] == ["numbers", "total"]  # one committed copy each, no temporaries
    for entry in entries:
        verify_dir(runs / "cache" / entry)
    total = pq.read_table(next((runs / "cache").glob("total-*")) / "total.parquet").column("total")[0].as_py()
    assert total == sum(i * i for i in range(5000))


def test_run_tables_print_error_text_verbatim(tmp_path) -> None:
    """Error texts and paths can hold brackets (gloo quotes `[/path/pair.cc:553]`): never parsed as markup."""
    import io

    from rich.console import Console

    from shardwalk.pipelines.progress import print_run
    from shardwalk.pipelines.runs_view import print_runs

    error = "RuntimeError: [/__w/pytorch/third_party/gloo/transport/tcp/pair.cc:553] Connection closed by peer"
    record = {"run_id": "r1", "pipeline": "p[x]", "status": "failed", "started": 1.0, "finished": 2.0,
              "stages": {"ingest": {"name": "ingest", "status": "done", "rows": 1, "seconds": 1.0, "metrics": {},
                                    "output": str(tmp_path / "[red]")},
                         "score": {"name": "score", "status": "failed", "rows": None, "seconds": None,
                                   "metrics": {"note": "[bold]"}, "output": "/runs/[red]/score", "error": error}}}
    (tmp_path / "[red]").mkdir()
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "run.json").write_text(json.dumps(record))
    out = io.StringIO()
    console = Console(file=out, width=400)
    print_run(record, tmp_path, console)
    print_runs(tmp_path, stream=out)
    text = out.getvalue()
    assert f"score failed: {error}" in text
    assert str(tmp_path / "[red]") in text and "note=[bold]" in text and "p[x]" in text
    assert "/runs/[red]/score" not in text  # a failed stage committed nothing: no path to list
