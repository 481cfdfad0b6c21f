"""The DAG runner on a thread pool: caching, partial reruns, failures, concurrency, names."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from core.dag import Pipeline, Runner, StageOptions, load_run, run_path
from core.errors import ConfigError, DataError
from core.io import TEMP_PREFIX

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
        "from core.io import atomic_dir\n"
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
