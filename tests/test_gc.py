"""gc keeps what runs reference whatever the runs dir's spelling, refuses another runs dir's records, and never
removes what a running stage writes (its lease); canonical locations; heartbeat leases. No Ray: a thread pool."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from shardwalk.core.dag import lease
from shardwalk.core.dag.gc import collect
from shardwalk.core.dag.runner import Pipeline, Runner, StageOptions
from shardwalk.core.errors import ConfigError
from shardwalk.core.storage import sink, store
from shardwalk.core.storage.location import canonical, contains, same_location

POOL = cf.ThreadPoolExecutor(max_workers=4)
STARTED, RELEASE = threading.Event(), threading.Event()


def thread_submit(fn: Any, args: tuple, options: StageOptions) -> cf.Future:
    return POOL.submit(fn, *args)


def source(out: Path, *, n: int) -> dict[str, Any]:
    """Writes one file itself and one Parquet part through the helpers' path (straight into a store attempt)."""
    (out / "n.json").write_text(json.dumps(n))
    sink.record([sink.put_parquet(pa.table({"x": list(range(n))}), sink.destination(out), "part-0.parquet")])
    return {"n": n}


def double(out: Path, source: Path, *, factor: int) -> dict[str, Any]:
    n = json.loads((source / "n.json").read_text())
    (out / "v.json").write_text(json.dumps(n * factor))
    return {"value": n * factor}


def make(n: int = 3) -> Pipeline:
    p = Pipeline("toy")
    p.stage("source", source, params={"n": n})
    p.stage("double", double, inputs=["source"], params={"factor": 2})
    return p


def waits_for_gc(out: Path, *, n: int) -> dict[str, Any]:
    """A long stage: part of its output is written (and looks a day old), then it waits while gc runs."""
    sink.record([sink.put_parquet(pa.table({"x": list(range(n))}), sink.destination(out), "early.parquet")])
    (out / "part").mkdir()
    (out / "part" / "a.json").write_text("1")
    os.utime(out, (0, 0))
    STARTED.set()
    assert RELEASE.wait(60)
    (out / "part" / "b.json").write_text("2")
    return {}


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "node-cache"))
    monkeypatch.setenv("SHARDWALK_SCRATCH", str(tmp_path / "scratch"))
    STARTED.clear()
    RELEASE.clear()


def _query_spelling(bucket_uri: str, s3_server: str) -> str:
    return f"{bucket_uri}/runs?endpoint_override={s3_server.removeprefix('http://')}&scheme=http"


def _all_hits(runs: str | Path) -> bool:
    return all(s.cache_hit for s in Runner(make(), runs, thread_submit).run().stages.values())


# ----------------------------------------------------------------------------- canonical locations


def test_spellings_of_one_location_are_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert canonical("s3://bkt/runs/?endpoint_override=127.0.0.1:9&scheme=http") == canonical("s3://bkt/runs") == "s3://bkt/runs"
    assert same_location("runs", f"file://{tmp_path}/runs") and same_location("link/x", tmp_path / "real" / "x")
    assert not same_location("s3://bkt/runs", "s3://bkt/runs2") and not same_location("s3://a/runs", "s3://b/runs")
    assert contains("s3://bkt", "s3://bkt/runs/cache?scheme=http") and not contains("s3://bkt/run", "s3://bkt/runs")
    with pytest.raises(ConfigError, match="unknown storage scheme"):
        canonical("ftp://host/x")


# ----------------------------------------------------------------------------- spellings and runs dirs


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Leases of 10 ms: gc's grace for just-committed attempts is over by the time it runs (references decide)."""
    monkeypatch.setenv("SHARDWALK_LEASE_PERIOD_S", "0.01")


def test_a_query_string_runs_dir_works_and_gc_under_the_other_spelling_keeps_its_outputs(
        s3_bucket: str, s3_server: str, no_grace: None) -> None:
    with_query, plain = _query_spelling(s3_bucket, s3_server), f"{s3_bucket}/runs"
    first = Runner(make(), with_query, thread_submit).run()  # today: NodeLocalPathError from sink.record
    assert first.status == "succeeded", first.stages["source"].error
    time.sleep(0.1)
    for spelling in (plain, with_query):
        assert collect(spelling, older_than=0) == []  # today: every committed attempt removed under `plain`
    assert _all_hits(plain) and _all_hits(with_query)
    attempt = first.stages["source"].attempt
    store.verify_attempt(store.require_committed(attempt))


def test_gc_keeps_the_outputs_of_a_run_made_with_the_plain_spelling(s3_bucket: str, s3_server: str, no_grace: None) -> None:
    plain = f"{s3_bucket}/runs"
    Runner(make(), plain, thread_submit).run()
    time.sleep(0.1)
    assert collect(_query_spelling(s3_bucket, s3_server), older_than=0) == []
    assert _all_hits(plain)


def test_gc_refuses_runs_recorded_under_another_runs_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shardwalk.pipelines.cli import main

    Runner(make(), tmp_path / "a", thread_submit).run()
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # records still name a/cache/...
    before = sorted(p.name for p in (tmp_path / "b" / "cache").iterdir())
    assert main(["gc", "--runs-dir", str(tmp_path / "b"), "--older-than", "0s"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"was recorded under {tmp_path / 'a'}" in err
    assert sorted(p.name for p in (tmp_path / "b" / "cache").iterdir()) == before


def test_gc_refuses_a_copied_prefix_on_a_store(s3_bucket: str, no_grace: None) -> None:
    Runner(make(), f"{s3_bucket}/a", thread_submit).run()
    fs, root = store.resolve(s3_bucket)
    for info in fs.get_file_info(pafs.FileSelector(f"{root}/a", recursive=True)):
        if info.type == pafs.FileType.File:
            fs.copy_file(info.path, info.path.replace(f"{root}/a/", f"{root}/b/", 1))
    with pytest.raises(ConfigError, match=f"recorded under {s3_bucket}/a, not {s3_bucket}/b"):
        collect(f"{s3_bucket}/b", older_than=0)
    assert store.committed_attempts(f"{s3_bucket}/b/cache/" + store.list_dir(f"{s3_bucket}/b/cache")[0].base_name)


def test_runs_view_names_a_store_runs_dir_with_both_slashes(s3_bucket: str) -> None:
    from shardwalk.pipelines.runs_view import resolve_run_id

    with pytest.raises(ConfigError, match=f"no runs under {s3_bucket}/empty/runs$"):  # today: s3:/...
        resolve_run_id(f"{s3_bucket}/empty", "latest")


# ----------------------------------------------------------------------------- running stages hold a lease


def _gc_while_running(runs: str | Path) -> tuple[Any, list[Any]]:
    p = Pipeline("slow")
    p.stage("slow", waits_for_gc, params={"n": 5})
    running = POOL.submit(Runner(p, runs, thread_submit).run)
    assert STARTED.wait(60)
    try:
        removed = collect(str(runs), older_than=0)
    finally:
        RELEASE.set()
    return running.result(timeout=60), removed


def test_gc_leaves_a_running_stage_alone_on_a_local_runs_dir(tmp_path: Path) -> None:
    record, removed = _gc_while_running(tmp_path / "runs")
    assert removed == []  # today: the stage's temporary directory, then FileNotFoundError in the stage
    assert record.status == "succeeded", record.stages["slow"].error
    out = Path(record.stages["slow"].output)
    assert sorted(p.name for p in (out / "part").iterdir()) == ["a.json", "b.json"]
    assert not list((tmp_path / "runs" / "cache").glob(f"{lease.PREFIX}*"))  # released at the end


def test_gc_leaves_a_running_stage_alone_on_a_store(s3_bucket: str) -> None:
    record, removed = _gc_while_running(f"{s3_bucket}/runs")
    assert removed == []  # today: the attempt prefix with early.parquet in it
    assert record.status == "succeeded", record.stages["slow"].error
    committed = store.require_committed(record.stages["slow"].attempt)
    store.verify_attempt(committed)  # every object its manifest names is there, intact
    assert "early.parquet" in committed.manifest["files"]


def test_a_lease_that_cannot_be_read_protects_its_stage(s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease rewritten under every GET fails mid-body (seen on moto under load): gc must not take it as stale."""
    read_json = store.read_json

    def failing_on_leases(uri: str) -> Any:
        if f"/{lease.PREFIX}" in uri:
            raise store.StoreUnavailableError(f"{uri}: object store request failed (Failed to flush response stream)")
        return read_json(uri)

    monkeypatch.setattr(store, "read_json", failing_on_leases)
    record, removed = _gc_while_running(f"{s3_bucket}/runs")
    assert removed == []
    assert record.status == "succeeded", record.stages["slow"].error


def test_a_dead_writers_stale_lease_and_attempt_are_collected_and_dry_run_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shardwalk.pipelines.cli import main

    runs = tmp_path / "runs"
    Runner(make(), runs, thread_submit).run()
    cache = runs / "cache"
    dead = cache / ".tmp-gone-abc@host@1@x"
    dead.mkdir()
    stale = Path(lease.lease_location(cache / "gone-abc", "host@1@x"))
    stale.write_text(json.dumps({"period_s": 30}))
    for path in (dead, stale):
        os.utime(path, (time.time() - 600, time.time() - 600))
    assert main(["gc", "--runs-dir", str(runs), "--older-than", "1m", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove stale lease: {stale} (not refreshed for 600s)" in out
    assert f"would remove uncommitted: {dead} (no manifest, no live lease, 600s old)" in out
    assert dead.exists() and stale.exists()
    assert {g.location for g in collect(str(runs), older_than=60)} == {str(dead), str(stale)}
    assert not dead.exists() and not stale.exists() and _all_hits(runs)


def test_a_live_lease_protects_every_entry_of_its_stage(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    Runner(make(), runs, thread_submit).run()
    cache = runs / "cache"
    entries = [cache / ".tmp-busy-abc@host@1@x", cache / ".state-busy-abc", cache / "busy-abc"]
    for path in entries:
        path.mkdir()
        os.utime(path, (0, 0))
    with lease.held(cache / "busy-abc"):
        assert collect(str(runs), older_than=0) == []
    assert {Path(g.location) for g in collect(str(runs), older_than=0)} == set(entries)


# ----------------------------------------------------------------------------- the lease itself


def _refreshed(where: str) -> float:
    return json.loads(Path(where).read_text())["refreshed"]


def test_a_lease_is_refreshed_while_held_removed_after_and_never_recreates_its_parent(tmp_path: Path) -> None:
    settings = lease.LeaseSettings(period_s=0.02)
    with lease.held(tmp_path / "out" / "stage-abc", settings) as where:
        first = _refreshed(where)
        deadline = time.monotonic() + 30
        while _refreshed(where) == first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _refreshed(where) > first
    assert not Path(where).exists()
    with lease.held(tmp_path / "gone" / "stage-abc", settings) as where:
        (tmp_path / "gone").rename(tmp_path / "moved")  # vanishes at once (rmtree could race a refresh)
        time.sleep(0.1)  # several refresh periods
        assert not (tmp_path / "gone").exists()
    assert lease.is_live(0.1, {"period_s": 0.05}, settings) and not lease.is_live(0.3, {"period_s": 0.05}, settings)
    assert lease.protected_name(Path(where).name) == "stage-abc" and lease.protected_name("stage-abc") is None
