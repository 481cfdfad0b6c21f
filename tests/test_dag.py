"""The DAG runner on a thread pool: caching, partial reruns, failures, concurrency, names."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardwalk.core.dag.runner import Pipeline, Runner, StageOptions, load_run, run_path
from shardwalk.core.errors import ConfigError, DataError
from shardwalk.core.storage.files import TEMP_PREFIX, write_parquet

ROOT = Path(__file__).resolve().parents[1]
POOL = cf.ThreadPoolExecutor(max_workers=4)
CALLS: list[str] = []


def thread_submit(fn: Any, args: tuple, options: StageOptions) -> cf.Future:
    return POOL.submit(fn, *args)


def source(out: Path, *, n: int) -> dict[str, Any]:
    CALLS.append("source")
    (out / "n.json").write_text(json.dumps(n))
    return {"n": n}


def double(out: Path, source: Path, *, factor: int) -> dict[str, Any]:
    CALLS.append("double")
    n = json.loads((source / "n.json").read_text())
    (out / "v.json").write_text(json.dumps(n * factor))
    return {"value": n * factor}


def explode(out: Path, source: Path) -> None:
    (out / "partial.json").write_text("half")
    raise DataError("row 3 is bad")


def make(n: int = 3, factor: int = 2) -> Pipeline:
    p = Pipeline("toy")
    p.stage("source", source, params={"n": n})
    p.stage("double", double, inputs=["source"], params={"factor": factor})
    return p


def test_stages_get_absolute_paths_whatever_folder_their_worker_runs_in(tmp_path: Path, monkeypatch) -> None:
    """`--runs-dir runs --set source=emb.parquet` against a `ray start` cluster started in another folder: the
    stage's task resolved both in its worker's folder (the ingest was written into the other folder's runs/,
    then 'vanished' for the next stage). The runner now hands stages absolute local paths."""
    from shardwalk.core.dag.cache_key import InputPath

    seen: list[tuple] = []

    def recording_submit(fn: Any, args: tuple, options: StageOptions) -> cf.Future:
        seen.append(args)
        return POOL.submit(fn, *args)

    def read(out: Path, *, source: str, graph: dict) -> dict[str, Any]:
        return {"size": Path(source).stat().st_size, "edges": graph["edges"]}

    monkeypatch.chdir(tmp_path)
    Path("emb.parquet").write_bytes(b"1234")
    p = Pipeline("rel")
    p.stage("read", read, params={"source": InputPath("emb.parquet"),
                                  "graph": {"edges": InputPath("builtin:karate"), "assignment": InputPath("")}})
    record = Runner(p, "runs", recording_submit).run()
    assert record.status == "succeeded"
    ((_fn, final, _inputs, params, _key, _rows),) = seen
    assert final == str(tmp_path / "runs" / "cache" / Path(final).name)
    assert params["source"] == str(tmp_path / "emb.parquet") and isinstance(params["source"], InputPath)
    assert params["graph"] == {"edges": "builtin:karate", "assignment": ""}  # not local files: left as given
    assert record.stages["read"].key_parts == Runner(p, str(tmp_path / "runs"), recording_submit).record.stages["read"].key_parts


def test_second_run_is_all_cache_hits(tmp_path: Path) -> None:
    CALLS.clear()
    first = Runner(make(), tmp_path, thread_submit).run()
    second = Runner(make(), tmp_path, thread_submit).run()
    assert first.status == second.status == "succeeded"
    assert [s.status for s in first.stages.values()] == ["done", "done"]
    assert [s.cache_hit for s in second.stages.values()] == [True, True]
    assert second.stages["double"].metrics == {"value": 6}
    assert CALLS == ["source", "double"]


def test_changing_a_parameter_reruns_only_downstream(tmp_path: Path) -> None:
    Runner(make(factor=2), tmp_path, thread_submit).run()
    CALLS.clear()
    record = Runner(make(factor=5), tmp_path, thread_submit).run()
    assert record.stages["source"].cache_hit and not record.stages["double"].cache_hit
    assert CALLS == ["double"]
    assert json.loads(Path(record.stages["double"].output, "v.json").read_text()) == 15


def test_force_reruns_everything(tmp_path: Path) -> None:
    Runner(make(), tmp_path, thread_submit).run()
    CALLS.clear()
    record = Runner(make(), tmp_path, thread_submit, force=True).run()
    assert CALLS == ["source", "double"] and not any(s.cache_hit for s in record.stages.values())


def test_failed_stage_commits_nothing_and_the_record_says_why(tmp_path: Path) -> None:
    p = make()
    p.stage("explode", explode, inputs=["source"])
    p.stage("after", double, inputs={"source": "explode"}, params={"factor": 1})
    record = Runner(p, tmp_path, thread_submit).run()
    assert record.status == "failed"
    failed = record.failed_stage()
    assert failed is not None and failed.name == "explode" and failed.bad_input
    assert failed.error == "DataError: row 3 is bad"
    assert record.stages["after"].status == "skipped"
    assert record.stages["double"].status == "done"  # the independent branch went on
    assert not Path(failed.output).exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]
    on_disk = load_run(tmp_path, record.run_id)
    assert on_disk["stages"]["explode"]["status"] == "failed"


def test_independent_stages_run_concurrently(tmp_path: Path) -> None:
    barrier = threading.Barrier(2, timeout=10)

    def left(out: Path) -> None:
        barrier.wait()

    def right(out: Path) -> None:
        barrier.wait()

    p = Pipeline("pair")
    p.stage("left", left)
    p.stage("right", right)
    record = Runner(p, tmp_path, thread_submit).run()  # a serial runner would break the barrier
    assert record.status == "succeeded"


@pytest.mark.parametrize("bad", ["../up", "a/b", "", ".hidden", "x" * 200])
def test_names_cannot_escape_the_runs_directory(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError):
        Pipeline("p").stage(bad, source, params={"n": 1})
    with pytest.raises(ConfigError):
        run_path(tmp_path, bad)


def test_declaration_errors_are_config_errors() -> None:
    p = make()
    with pytest.raises(ConfigError, match="unknown or later stage 'nope'"):
        p.stage("x", double, inputs={"source": "nope"}, params={"factor": 1})
    with pytest.raises(ConfigError, match="does not accept"):
        p.stage("y", double, inputs=["source"], params={"wrong": 1})
    with pytest.raises(ConfigError, match="declared twice"):
        p.stage("source", source, params={"n": 1})


def test_a_corrupt_cached_output_is_recomputed_not_served(tmp_path: Path) -> None:
    first = Runner(make(), tmp_path, thread_submit).run()
    stored = Path(first.stages["double"].output, "v.json")
    stored.write_text(stored.read_text().replace("6", "7"))  # same size: only the checksum tells
    CALLS.clear()
    record = Runner(make(), tmp_path, thread_submit).run()
    assert record.stages["source"].cache_hit and not record.stages["double"].cache_hit
    assert CALLS == ["double"] and json.loads(stored.read_text()) == 6


def test_a_run_removes_temporaries_of_killed_writers_only(tmp_path: Path) -> None:
    """A stage SIGKILLed mid-write leaves its temporary; the next run removes it, not live or remote ones."""
    cache = tmp_path / "cache"
    code = (
        "import os, signal, sys\n"
        "from shardwalk.core.storage.files import atomic_dir\n"
        "with atomic_dir(sys.argv[1]) as tmp:\n"
        "    (tmp / 'half.parquet').write_text('partial')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(cache / "double-dead")], cwd=ROOT, check=False)
    assert killed.returncode == -signal.SIGKILL
    (orphan,) = cache.glob(f"{TEMP_PREFIX}double-dead@*")
    live = cache / f"{TEMP_PREFIX}x@{socket.gethostname()}@{os.getpid()}@0"  # a writer still running
    remote = cache / f"{TEMP_PREFIX}x@another-host@1@0"  # on another node of a shared dir
    live.mkdir()
    remote.mkdir()
    assert Runner(make(), tmp_path, thread_submit).run().status == "succeeded"
    assert not orphan.exists()
    assert live.is_dir() and remote.is_dir()


# ----------------------------------------------------------------------------- commit checks (issue 24 item 4)


def parts_then_cleanup(out: Path, *, recreate: str) -> dict[str, Any]:
    """Writes a part, loses its temporary directory to an overeager cleanup, then writes another part."""
    write_parquet(pa.table({"id": [0, 1]}), out / "part-0.parquet")
    shutil.rmtree(out)
    if recreate == "mkdir":  # a writer that makes its own directories
        out.mkdir()
        pq.write_table(pa.table({"id": [2, 3]}), out / "part-1.parquet")
    else:
        write_parquet(pa.table({"id": [2, 3]}), out / "part-1.parquet")
    return {"rows": 4}


@pytest.mark.parametrize("recreate", ["write_parquet", "mkdir"])
def test_a_temporary_directory_deleted_mid_stage_fails_the_stage_and_commits_nothing(tmp_path: Path, recreate: str) -> None:
    p = Pipeline("lost")
    p.stage("parts", parts_then_cleanup, params={"recreate": recreate})
    record = Runner(p, tmp_path, thread_submit).run()
    stage = record.stages["parts"]
    assert stage.status == "failed" and stage.error_type == "CommitRefusedError" and not stage.bad_input  # exit 1
    assert not (Path(stage.output) / "_SUCCESS").exists() and not Path(stage.output).exists()
    assert not list((tmp_path / "cache").glob(f"{TEMP_PREFIX}*"))


def writes_rows(out: Path, *, written: int, declared: int) -> dict[str, Any]:
    write_parquet(pa.table({"id": list(range(written))}), out / "part-0.parquet")
    return {"rows": declared}


@pytest.mark.parametrize(("written", "declared", "status"), [(5, 5, "done"), (3, 5, "failed"), (5, 3, "failed")])
def test_an_output_whose_rows_disagree_with_the_declared_rows_is_refused(tmp_path: Path, written: int, declared: int,
                                                                        status: str) -> None:
    p = Pipeline("rows")
    p.stage("parts", writes_rows, params={"written": written, "declared": declared}, declares_rows=True)
    stage = Runner(p, tmp_path, thread_submit).run().stages["parts"]
    assert stage.status == status
    if status == "failed":
        assert stage.error_type == "CommitRefusedError" and f"holds {written:,} rows" in stage.error and not stage.bad_input
        assert not Path(stage.output).exists()
    else:
        assert stage.rows == 5


# ----------------------------------------------------------------------------- vanished upstream outputs (item 7)


def _vanishing_submit(victim: str, times: int) -> Any:
    """A submit that deletes `victim`'s committed output right before each of its first `times` other submits."""
    left = [times]

    def submit(fn: Any, args: tuple, options: StageOptions) -> cf.Future:
        if options.name != victim and left[0] > 0:
            left[0] -= 1
            shutil.rmtree(args[2]["source"])
        return POOL.submit(fn, *args)
    return submit


def test_an_upstream_output_that_vanished_is_recomputed_with_a_warning(tmp_path: Path) -> None:
    Runner(make(), tmp_path, thread_submit).run()
    CALLS.clear()
    record = Runner(make(factor=5), tmp_path, _vanishing_submit("source", 1)).run()  # `source` is a hit, then vanishes
    assert record.status == "succeeded"
    assert CALLS.count("source") == 1 and record.stages["source"].status == "done"
    assert "vanished" in record.stages["source"].warning
    assert json.loads((Path(record.stages["double"].output) / "v.json").read_text()) == 15


def test_an_upstream_output_that_keeps_vanishing_fails_as_an_internal_error(tmp_path: Path) -> None:
    Runner(make(), tmp_path, thread_submit).run()
    record = Runner(make(factor=5), tmp_path, _vanishing_submit("source", 10)).run()
    stage = record.stages["double"]
    assert stage.status == "failed" and stage.error_type == "UpstreamVanishedError" and not stage.bad_input
