"""The DAG runner with its runs dir on a real S3-compatible server (moto, 127.0.0.1), on a thread pool."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from shardwalk.core.dag.runner import Pipeline, Runner, StageOptions, list_runs, load_run
from shardwalk.core.errors import ConfigError
from shardwalk.core.storage import sink, store
from shardwalk.core.storage.sink import NODE_MARKER

POOL = cf.ThreadPoolExecutor(max_workers=4)
CALLS: list[str] = []
LOCK = threading.Lock()


def thread_submit(fn: Any, args: tuple, options: StageOptions) -> cf.Future:
    return POOL.submit(fn, *args)


def source(out: Path, *, n: int) -> dict[str, Any]:
    with LOCK:
        CALLS.append("source")
    (out / "n.json").write_text(json.dumps(n))
    return {"n": n}


def double(out: Path, source: Path, *, factor: int) -> dict[str, Any]:
    with LOCK:
        CALLS.append("double")
    n = json.loads((source / "n.json").read_text())
    (out / "v.json").write_text(json.dumps(n * factor))
    return {"value": n * factor}


def make(n: int = 3, factor: int = 2) -> Pipeline:
    p = Pipeline("toy")
    p.stage("source", source, params={"n": n})
    p.stage("double", double, inputs=["source"], params={"factor": factor})
    return p


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "node-cache"))
    monkeypatch.setenv("SHARDWALK_SCRATCH", str(tmp_path / "scratch"))
    CALLS.clear()


def _value(record: Any) -> int:
    attempt = record.stages["double"].attempt
    return json.loads(store.read_bytes(store.join(attempt, "v.json")))


def test_runs_on_s3_commit_every_artifact_in_the_bucket_and_rerun_hits(s3_bucket: str, tmp_path: Path) -> None:
    runs = f"{s3_bucket}/shardwalk"
    first = Runner(make(), runs, thread_submit).run()
    assert first.status == "succeeded" and _value(first) == 6
    assert first.stages["double"].attempt.startswith(f"{runs}/cache/double-")
    assert first.stages["source"].bytes_uploaded > 0 and first.stages["double"].bytes_downloaded > 0
    second = Runner(make(), runs, thread_submit).run()
    assert CALLS == ["source", "double"]  # nothing recomputed
    assert all(s.cache_hit for s in second.stages.values())
    assert [r["run_id"] for r in list_runs(runs)] == [second.run_id, first.run_id]
    assert load_run(runs, first.run_id)["stages"]["double"]["attempt"] == first.stages["double"].attempt
    left = [p.name for p in (tmp_path / "scratch").iterdir()]
    assert left == [NODE_MARKER]  # scratch is cleaned after each upload (the marker says whose node it is)


def test_altered_cached_object_is_recomputed(s3_bucket: str) -> None:
    runs = f"{s3_bucket}/shardwalk"
    first = Runner(make(), runs, thread_submit).run()
    store.write_bytes(store.join(first.stages["source"].attempt, "n.json"), b"7")  # same size, other bytes
    again = Runner(make(), runs, thread_submit).run()
    assert again.stages["source"].status == "done" and again.stages["source"].attempt != first.stages["source"].attempt
    assert _value(again) == 6


def test_concurrent_runs_on_one_prefix_both_succeed_and_agree(s3_bucket: str) -> None:
    runs = f"{s3_bucket}/race"
    with cf.ThreadPoolExecutor(2) as pool:
        records = list(pool.map(lambda _: Runner(make(), runs, thread_submit).run(), range(2)))
    assert [r.status for r in records] == ["succeeded", "succeeded"]
    assert _value(records[0]) == _value(records[1]) == 6
    third = Runner(make(), runs, thread_submit).run()
    assert all(s.cache_hit for s in third.stages.values()) and _value(third) == 6


def test_unknown_run_is_a_config_error_naming_the_store(s3_bucket: str) -> None:
    with pytest.raises(ConfigError, match=f"no run 'nope' under {s3_bucket}/x/runs"):
        load_run(f"{s3_bucket}/x", "nope")


def test_gc_removes_a_killed_writers_attempt_and_nothing_else(s3_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    from shardwalk.pipelines.cli import main

    runs = f"{s3_bucket}/gc"
    record = Runner(make(), runs, thread_submit).run()
    killed = f"{runs}/cache/source-{record.stages['source'].key[:24]}/attempts/20200101T000000-host-1-dead"
    store.write_bytes(f"{killed}/n.json", b"3")  # objects uploaded, then the writer died: no manifest
    stray = f"{runs}/cache/other-abc/attempts/20200101T000000-host-2-done"
    store.write_bytes(f"{stray}/x.json", b"1")
    store.write_json(f"{stray}/_SUCCESS", {"files": {}, "rows": 0})  # committed, named by no run record
    assert main(["gc", "--runs-dir", runs, "--older-than", "1h", "--dry-run"]) == 0
    assert store.read_bytes(f"{killed}/n.json") == b"3"
    assert main(["gc", "--runs-dir", runs, "--older-than", "1h"]) == 0
    out = capsys.readouterr().out
    assert f"removed uncommitted: {killed}" in out and f"removed unreferenced: {stray}" in out
    assert store.read_bytes(f"{killed}/n.json") is None and store.read_bytes(f"{stray}/x.json") is None
    again = Runner(make(), runs, thread_submit).run()  # every committed, referenced output survived
    assert all(s.cache_hit for s in again.stages.values()) and _value(again) == 6
    assert main(["gc", "--runs-dir", runs, "--older-than", "soon"]) == 2


def test_gc_on_a_local_runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from shardwalk.core.dag.gc import collect

    monkeypatch.chdir(tmp_path)
    runs = Path("runs")  # relative, as the CLI's default: records hold relative paths
    record = Runner(make(), runs, thread_submit).run()
    leftover = runs / "cache" / ".tmp-source-x@host@1@abc"
    leftover.mkdir()
    os.utime(leftover, (0, 0))
    removed = collect(str(runs), older_than=3600)
    assert [g.location for g in removed] == [str(leftover.absolute())]
    assert all(Path(s.output).is_dir() for s in record.stages.values())


def checkpointing(out: Path, *, n: int) -> dict[str, Any]:
    from shardwalk.core.dag.attempt import stage_state_dir

    where = stage_state_dir()
    store.write_bytes(store.join(where, "state.json"), json.dumps(n).encode())
    assert store.read_bytes(store.join(where, "state.json")) == b"1"  # readable while the stage runs
    (out / "where.json").write_text(json.dumps(where))
    return {}


def test_stage_state_lives_in_the_bucket_keyed_like_its_output_and_is_spent_on_commit(s3_bucket: str) -> None:
    p = Pipeline("ck")
    p.stage("ck", checkpointing, params={"n": 1})
    runs = f"{s3_bucket}/ckruns"
    record = Runner(p, runs, thread_submit).run()
    stage = record.stages["ck"]
    where = json.loads(store.read_bytes(store.join(stage.attempt, "where.json")))
    assert where == f"{runs}/cache/.state-ck-{stage.key[:24]}"
    assert store.read_bytes(f"{where}/state.json") is None  # removed once the output was committed


SERVER: list[Any] = []


def stops_the_store(out: Path, *, n: int) -> dict[str, Any]:
    """A stage during which the object store goes away (before its upload)."""
    if SERVER:
        SERVER.pop().stop()
    (out / "n.json").write_text(json.dumps(n))
    return {"n": n}


def test_store_stopped_mid_stage_fails_it_naming_the_uri_then_a_rerun_completes(tmp_path: Path) -> None:
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    from tests.conftest import _free_port

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True,
                      region="us-east-1").create_dir("faultbucket")
    runs = f"s3://faultbucket/runs?endpoint_override=127.0.0.1:{port}&scheme=http"
    p = Pipeline("fault")
    p.stage("source", stops_the_store, params={"n": 4})
    p.stage("double", double, inputs=["source"], params={"factor": 2})
    SERVER.append(server)
    with pytest.raises(store.StoreUnavailableError, match="s3://faultbucket/runs/") as err:  # the CLI exits 1
        Runner(p, runs, thread_submit).run()
    assert "\n" not in str(err.value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()  # moto keeps its buckets in-process: same store, back again
    try:
        stage = store.join(runs, "cache", f"source-{p.keys()['source'][:24]}")
        assert store.committed_attempts(stage) == []  # nothing committed
        record = Runner(p, runs, thread_submit).run()
        assert record.status == "succeeded" and record.stages["double"].metrics == {"value": 8}
    finally:
        server.stop()


# ----------------------------------------------------------------------------- issue 24: commit checks, vanished upstream


def loses_its_attempt(out: Path, *, n: int) -> dict[str, Any]:
    """A stage whose attempt prefix is deleted mid-stage (as a careless `gc` would)."""

    (out / "n.json").write_text(json.dumps(n))
    store.delete_prefix(sink.destination(out))
    return {"n": n}


def test_an_attempt_deleted_mid_stage_is_not_committed(s3_bucket: str) -> None:
    runs = f"{s3_bucket}/lost"
    p = Pipeline("lost")
    p.stage("source", loses_its_attempt, params={"n": 3})
    stage = Runner(p, runs, thread_submit).run().stages["source"]
    assert stage.status == "failed" and stage.error_type == "CommitRefusedError" and not stage.bad_input
    assert store.committed_attempts(stage.output) == []


def test_a_vanished_upstream_attempt_is_recomputed_not_reported_as_bad_input(s3_bucket: str) -> None:
    runs = f"{s3_bucket}/vanish"
    first = Runner(make(), runs, thread_submit).run()
    lost = first.stages["source"].attempt

    def submit(fn: Any, args: tuple, options: StageOptions) -> cf.Future:
        if options.name == "double" and lost in args[2].values():  # deleted after the runner counted it a hit
            store.delete_prefix(lost)
        return POOL.submit(fn, *args)

    CALLS.clear()
    record = Runner(make(factor=5), runs, submit).run()
    assert record.status == "succeeded", record.stages["double"].error
    assert CALLS == ["source", "double"]  # the first `double` failed fetching its input, before its body ran
    assert "vanished" in record.stages["source"].warning and record.stages["source"].attempt != lost
    assert _value(record) == 15
