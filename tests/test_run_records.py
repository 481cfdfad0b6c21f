"""An unreadable run.json is listed as `unreadable` with its reason, shown by `shardwalk runs`, and stops gc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardwalk.core.dag import gc
from shardwalk.core.dag.run_records import UNREADABLE
from shardwalk.core.dag.runner import list_runs
from shardwalk.core.errors import DataError
from shardwalk.pipelines.cli import main
from shardwalk.pipelines.runs_view import resolve_run_id

GOOD = "20261201-030000-index-aaaaaa"
BAD = "20261201-040000-index-bbbbbb"


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    good = tmp_path / "runs" / GOOD / "run.json"
    good.parent.mkdir(parents=True)
    good.write_text(json.dumps({"run_id": GOOD, "pipeline": "index", "config": {}, "status": "succeeded",
                                "started": 1000.0, "finished": 1005.0, "stages": {}}))
    bad = tmp_path / "runs" / BAD / "run.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"run_id": "20261201-040000-index-bbbbbb", "stages": {')  # truncated by a full disk
    return tmp_path


def test_list_runs_surfaces_an_unreadable_record_with_the_reason(runs_dir: Path) -> None:
    records = {r["run_id"]: r for r in list_runs(runs_dir)}
    assert set(records) == {GOOD, BAD}
    assert records[BAD]["status"] == UNREADABLE
    assert "run.json" in records[BAD]["error"] and "not valid JSON" in records[BAD]["error"]
    assert records[GOOD]["status"] == "succeeded"


def test_runs_command_shows_the_unreadable_run(runs_dir: Path, capsys) -> None:
    assert main(["runs", "--runs-dir", str(runs_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    bad = [line for line in lines if line.startswith(BAD)]
    assert len(bad) == 1 and f"{UNREADABLE}: " in bad[0] and "not valid JSON" in bad[0]


def test_latest_skips_an_unreadable_record(runs_dir: Path) -> None:
    assert resolve_run_id(runs_dir, "latest") == GOOD  # BAD is newer (mtime) but cannot be shown


def test_gc_refuses_to_guess_what_an_unreadable_record_references(runs_dir: Path) -> None:
    with pytest.raises(DataError, match="not valid JSON.*before gc"):
        gc.find_garbage(str(runs_dir), older_than=0.0)


def test_list_runs_on_an_object_store_surfaces_an_unreadable_record(s3_bucket: str) -> None:
    from shardwalk.core.storage import store

    runs = f"{s3_bucket}/shardwalk"
    store.write_bytes(f"{runs}/runs/{GOOD}/run.json", json.dumps({"run_id": GOOD, "started": 1.0, "stages": {}}).encode())
    store.write_bytes(f"{runs}/runs/{BAD}/run.json", b'{"run_id": ')
    records = {r["run_id"]: r for r in list_runs(runs)}
    assert set(records) == {GOOD, BAD} and records[BAD]["status"] == UNREADABLE
    assert "not valid JSON" in records[BAD]["error"]


def test_a_recorded_attempt_on_a_query_string_runs_dir_is_placed_under_the_given_runs_dir() -> None:
    """A run made with `s3://b/runs?endpoint_override=…` records its attempts with the query string."""
    from shardwalk.core.dag.run_records import placed_stages

    spelled = "s3://b/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    attempt = "s3://b/runs/cache/build-abc/attempts/20261206T081514-vm-1-85b6b969?endpoint_override=127.0.0.1:9000&scheme=http"
    record = {"run_id": "r", "stages": {"build": {"key": "abc", "attempt": attempt}}}
    placed = placed_stages(record, "s3://b/runs")["stages"]["build"]
    assert placed["attempt"] == "s3://b/runs/cache/build-abc/attempts/20261206T081514-vm-1-85b6b969"
    assert placed_stages(record, spelled)["stages"]["build"]["attempt"].endswith("85b6b969?endpoint_override=127.0.0.1:9000&scheme=http")
