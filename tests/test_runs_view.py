"""`shardwalk runs/show/diff`: whole ids when piped, `latest` and prefixes, pipeline order, full metrics, diffs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from shardwalk.pipelines.cli import main
from shardwalk.pipelines.index import DEFAULTS as INDEX_DEFAULTS

RUN_A = "20261201-030000-index-aaaaaa"
RUN_B = "20261201-040000-index-bbbbbb"
ORDER = ["ingest", "build", "knn_graph", "evaluate"]


def _record(run_id: str, started: float, *, ef: int, recall: float) -> dict:
    config = copy.deepcopy(INDEX_DEFAULTS)
    config["ef"] = ef
    many = {f"metric_{i:02d}": i * 1.5 for i in range(30)}
    stages = {
        name: {"name": name, "key": f"{name}-key", "output": f"/runs/cache/{name}-key", "status": "done",
               "cache_hit": False, "rows": 10, "seconds": 1.0,
               "metrics": {"recall_at_10": recall, **many} if name == "evaluate" else {"rows": 10}}
        for name in sorted(ORDER)  # run.json is written with sorted keys
    }
    return {"run_id": run_id, "pipeline": "index", "config": config, "status": "succeeded",
            "started": started, "finished": started + 5, "stages": stages, "stage_order": ORDER}


@pytest.fixture
def runs_dir(tmp_path: Path) -> str:
    for rec in (_record(RUN_A, 1000.0, ef=64, recall=0.9), _record(RUN_B, 2000.0, ef=128, recall=0.97)):
        path = tmp_path / "runs" / rec["run_id"] / "run.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(rec, sort_keys=True))
    return str(tmp_path)


def test_runs_piped_prints_whole_ids_one_per_line(runs_dir: str, capsys) -> None:
    assert main(["runs", "--runs-dir", runs_dir]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [RUN_B, RUN_A]


def test_runs_json(runs_dir: str, capsys) -> None:
    assert main(["runs", "--runs-dir", runs_dir, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in rows] == [RUN_B, RUN_A] and rows[0]["status"] == "succeeded"


def test_show_latest_and_unique_prefix(runs_dir: str, capsys) -> None:
    assert main(["show", "latest", "--runs-dir", runs_dir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == RUN_B
    assert main(["show", "20261201-03", "--runs-dir", runs_dir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == RUN_A


def test_ambiguous_or_unknown_prefix_exits_2_with_one_line(runs_dir: str, capsys) -> None:
    assert main(["show", "20261201", "--runs-dir", runs_dir]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matches 2 runs" in err and RUN_A in err
    assert main(["show", "2099", "--runs-dir", runs_dir]) == 2
    assert "no run '2099'" in capsys.readouterr().err


def test_show_lists_stages_in_pipeline_order_with_every_metric(runs_dir: str, capsys) -> None:
    assert main(["show", RUN_B, "--runs-dir", runs_dir]) == 0
    out = capsys.readouterr().out
    assert RUN_B in out
    positions = [out.index(f"│ {name} ") for name in ORDER]
    assert positions == sorted(positions)
    for i in range(30):
        assert f"metric_{i:02d}={i * 1.5:.4g}" in out
    assert "…" not in out


def test_diff_shows_settings_and_metrics_that_differ(runs_dir: str, capsys) -> None:
    assert main(["diff", RUN_A, "latest", "--runs-dir", runs_dir, "--json"]) == 0
    rows = {(r["section"], r["key"]): (r["a"], r["b"]) for r in json.loads(capsys.readouterr().out)}
    assert rows == {("setting", "ef"): (64, 128), ("metric", "evaluate.recall_at_10"): (0.9, 0.97)}
    assert main(["diff", RUN_A, RUN_B, "--runs-dir", runs_dir]) == 0
    out = capsys.readouterr().out
    assert "recall_at_10" in out and "ef" in out and "metric_01" not in out


def reads_file(out: Path, *, src: str, n: int) -> dict:
    (out / "copy.txt").write_text(Path(src).read_text() * n)
    return {}


def after(out: Path, work: Path) -> dict:
    (out / "done.txt").write_text("ok")
    return {}


def _toy_run(runs: Path, src: Path, n: int) -> str:
    import concurrent.futures as cf

    from shardwalk.core.dag.cache_key import InputPath
    from shardwalk.core.dag.runner import Pipeline, Runner

    p = Pipeline("toy")
    p.stage("work", reads_file, params={"src": InputPath(str(src)), "n": n})
    p.stage("after", after, inputs=["work"])
    with cf.ThreadPoolExecutor(2) as pool:
        return Runner(p, runs, lambda fn, args, options: pool.submit(fn, *args)).run().run_id


def test_show_says_why_each_stage_missed_the_cache(tmp_path: Path, capsys) -> None:
    src, runs = tmp_path / "in.txt", tmp_path / "runs"
    src.write_text("a")
    first = _toy_run(runs, src, 1)
    src.write_text("b")  # edited in place
    second = _toy_run(runs, src, 1)
    third = _toy_run(runs, src, 2)
    capsys.readouterr()
    assert main(["show", first, "--runs-dir", str(runs)]) == 0
    assert "work: no earlier run of this stage" in capsys.readouterr().out
    assert main(["show", second, "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert f"work: input src changed since run {first}" in out and f"after: upstream work changed since run {first}" in out
    assert main(["show", third, "--runs-dir", str(runs)]) == 0
    assert f"work: params changed since run {second}" in capsys.readouterr().out
