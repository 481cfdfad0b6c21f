"""Issue 17 hardening without Ray: sealed checkpoints, stage state and --force, run records that always end,
connection and disk failures as one line."""

from __future__ import annotations

import concurrent.futures as cf
import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest

from shardwalk.core.dag.attempt import stage_state_dir, state_dir
from shardwalk.core.dag.runner import (
    Pipeline,
    Runner,
    StageOptions,
    execute_stage,
    load_run,
)
from shardwalk.core.errors import ClusterUnreachableError, CorruptArtifactError
from shardwalk.core.srrw import SRRW, Schedule, load_token, make_tokens, save_token
from shardwalk.core.storage.files import write_json_atomic
from shardwalk.core.storage.store import read_json_sealed, write_json_sealed

ROOT = Path(__file__).resolve().parents[1]
POOL = cf.ThreadPoolExecutor(max_workers=2)
SEEN: list[Any] = []


def thread_submit(fn: Any, args: tuple, options: StageOptions) -> cf.Future:
    return POOL.submit(fn, *args)


# ----------------------------------------------------------------------------- item 3: sealed checkpoints


def _token(tmp_path: Path) -> Path:
    graph = nx.karate_club_graph()
    chain = SRRW(graph, 5.0, "mhrw")
    token = make_tokens(chain, 3, Schedule(), seed=1)[0]
    token.node = 7
    return save_token(tmp_path, token)


def test_an_edited_token_checkpoint_is_refused_with_a_way_out(tmp_path: Path) -> None:
    manifest = _token(tmp_path)
    assert load_token(tmp_path, 0).node == 7
    manifest.write_text(manifest.read_text().replace('"node": 7', '"node": 8'))
    with pytest.raises(CorruptArtifactError, match=r"token-0\.json: token checkpoint does not match its checksum") as err:
        load_token(tmp_path, 0)
    assert f"delete {tmp_path}" in str(err.value) and "--force" in str(err.value)


def test_a_token_checkpoint_naming_a_file_outside_its_directory_is_refused(tmp_path: Path) -> None:
    manifest = _token(tmp_path)
    meta = read_json_sealed(manifest, "token checkpoint")
    meta["files"]["theta"]["file"] = "../elsewhere.npy"
    write_json_sealed(manifest, meta)  # even a correctly sealed manifest may not leave its directory
    with pytest.raises(CorruptArtifactError, match="unsafe path"):
        load_token(tmp_path, 0)


def test_sealed_json_round_trips_and_refuses_truncation(tmp_path: Path) -> None:
    path = tmp_path / "meta.json"
    write_json_sealed(path, {"alpha": 1.5, "nested": {"a": [1, 2]}})
    assert read_json_sealed(path, "meta") == {"alpha": 1.5, "nested": {"a": [1, 2]}}
    path.write_text(path.read_text()[:20])
    with pytest.raises(CorruptArtifactError, match=r"meta is not valid JSON \(.*\); delete x$"):
        read_json_sealed(path, "meta", "; delete x")


# ----------------------------------------------------------------------------- item 4: stage state and --force


def resumable(out: Path, *, steps: int) -> dict[str, Any]:
    """Counts steps in its state directory, resuming from whatever an earlier attempt left there."""
    state = stage_state_dir()
    assert state is not None
    state.mkdir(parents=True, exist_ok=True)
    counter = state / "done.json"
    start = json.loads(counter.read_text()) if counter.is_file() else 0
    SEEN.append(start)
    (out / "steps.json").write_text(json.dumps(steps))
    return {"resumed_from": start}


def _resumable_pipeline() -> Pipeline:
    p = Pipeline("resume")
    p.stage("walk", resumable, params={"steps": 10})
    return p


def test_force_retires_a_stages_state_and_a_commit_removes_it(tmp_path: Path) -> None:
    pipeline = _resumable_pipeline()
    final = Path(Runner(pipeline, tmp_path, thread_submit).record.stages["walk"].output)
    stale = state_dir(final)
    stale.mkdir(parents=True)
    (stale / "done.json").write_text("4")  # a killed earlier attempt's checkpoint
    SEEN.clear()
    Runner(pipeline, tmp_path, thread_submit).run()
    assert SEEN == [4] and not stale.exists()  # resumed, then the committed stage dropped its state
    stale.mkdir()
    (stale / "done.json").write_text("4")
    record = Runner(pipeline, tmp_path, thread_submit, force=True).run()
    assert SEEN == [4, 0] and record.stages["walk"].metrics == {"resumed_from": 0}  # --force: from scratch


def test_state_dir_is_keyed_like_the_output(tmp_path: Path) -> None:
    a = Runner(_resumable_pipeline(), tmp_path, thread_submit).record.stages["walk"]
    other = Pipeline("resume")
    other.stage("walk", resumable, params={"steps": 10}, version="2")
    b = Runner(other, tmp_path, thread_submit).record.stages["walk"]
    assert state_dir(a.output) != state_dir(b.output)  # a new stage version never resumes old checkpoints


# ----------------------------------------------------------------------------- item 6/9: run records always end


def source(out: Path, *, n: int) -> dict[str, Any]:
    (out / "n.json").write_text(json.dumps(n))
    return {"n": n}


def _one_stage() -> Pipeline:
    p = Pipeline("one")
    p.stage("source", source, params={"n": 3})
    return p


def test_a_failed_connection_deletes_nothing_and_ends_the_record_failed(tmp_path: Path) -> None:
    first = Runner(_one_stage(), tmp_path, thread_submit).run()
    committed = Path(first.stages["source"].output)

    def unreachable() -> None:
        raise ClusterUnreachableError("cannot reach the Ray cluster at 127.0.0.1:6379")

    runner = Runner(_one_stage(), tmp_path, thread_submit, force=True, on_start=unreachable)
    with pytest.raises(ClusterUnreachableError):
        runner.run()
    assert (committed / "n.json").is_file()  # --force retired nothing: the run never started
    on_disk = load_run(tmp_path, runner.record.run_id)
    assert on_disk["status"] == "failed" and "cannot reach the Ray cluster" in on_disk["error"]
    assert on_disk["stages"]["source"]["status"] == "skipped"


def test_an_interrupted_run_ends_interrupted(tmp_path: Path) -> None:
    def ctrl_c(fn: Any, args: tuple, options: StageOptions) -> cf.Future:
        raise KeyboardInterrupt

    runner = Runner(_one_stage(), tmp_path, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    assert load_run(tmp_path, runner.record.run_id)["status"] == "interrupted"


def test_a_run_closes_the_records_of_killed_drivers(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    killed = {"run_id": "killed", "pipeline": "one", "status": "running", "host": socket.gethostname(), "pid": pid,
              "started": 1.0, "stages": {"source": {"name": "source", "status": "running"}}}
    alive = {**killed, "run_id": "alive", "pid": os.getpid(), "stages": {}}
    elsewhere = {**killed, "run_id": "elsewhere", "host": "another-host"}
    for record in (killed, alive, elsewhere):
        write_json_atomic(tmp_path / "runs" / record["run_id"] / "run.json", record)
    Runner(_one_stage(), tmp_path, thread_submit).run()
    closed = load_run(tmp_path, "killed")
    assert closed["status"] == "interrupted" and f"pid {pid}" in closed["error"]
    assert closed["stages"]["source"]["status"] == "interrupted"
    assert load_run(tmp_path, "alive")["status"] == load_run(tmp_path, "elsewhere")["status"] == "running"


def test_a_stage_reports_its_own_figures_when_another_run_committed_first(tmp_path: Path) -> None:
    final = str(tmp_path / "cache" / "source-k")
    execute_stage(source, final, {}, {"n": 1}, "k")

    def other(out: Path, *, n: int) -> dict[str, Any]:
        (out / "n.json").write_text(json.dumps(n))
        return {"mine": True}

    assert execute_stage(other, final, {}, {"n": 1}, "k")["metrics"] == {"mine": True}


def test_a_corrupt_cache_entry_is_reported_when_recomputed(tmp_path: Path) -> None:
    first = Runner(_one_stage(), tmp_path, thread_submit).run()
    stored = Path(first.stages["source"].output, "n.json")
    stored.write_text("4")
    record = Runner(_one_stage(), tmp_path, thread_submit).run()
    warning = record.stages["source"].warning
    assert warning is not None and "n.json" in warning and "recomputed" in warning
    assert load_run(tmp_path, record.run_id)["stages"]["source"]["warning"] == warning


# ----------------------------------------------------------------------------- item 6: full disk, wrong address


def test_a_full_disk_leaves_no_temporary_run_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        with open(self, "w") as handle:
            handle.write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(tmp_path / "run.json", {"status": "running"})
    assert list(tmp_path.iterdir()) == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_probe_refuses_an_address_nothing_answers_on() -> None:
    from shardwalk.pipelines.runtime import probe

    port = _closed_port()
    with pytest.raises(ClusterUnreachableError, match=f"127.0.0.1:{port}"):
        probe(f"127.0.0.1:{port}", timeout=5)


def test_probe_refuses_a_listener_that_accepts_and_never_answers() -> None:
    from benchmarks.bench_faults import _silent_listener
    from shardwalk.pipelines.runtime import probe

    with _silent_listener() as port, pytest.raises(ClusterUnreachableError, match=f"127.0.0.1:{port}: timed out"):
        probe(f"127.0.0.1:{port}", timeout=1)  # today: accepted, then `ray.init` retries for many minutes


def test_cli_wrong_address_is_one_line_exit_1_and_keeps_committed_outputs(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    Runner(_one_stage(), runs, thread_submit).run()
    before = sorted(p.name for p in (runs / "cache").iterdir())
    port = _closed_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHARDWALK_CONNECT_TIMEOUT_S": "5"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "shardwalk.pipelines.cli", "run", "ingest", "--runs-dir", str(runs), "--force",
         "--set", "source=builtin:digits", "--address", f"127.0.0.1:{port}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("shardwalk:")]
    assert proc.returncode == 1, proc.stderr
    assert lines == [f"shardwalk: ClusterUnreachableError: cannot reach the Ray cluster at 127.0.0.1:{port} "
                     f"(127.0.0.1:{port}: Connection refused after at most 5 s); check --address / RAY_ADDRESS"]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (runs / "cache").iterdir()) == before
    (record,) = [json.loads(p.read_text()) for p in (runs / "runs").glob("*/run.json") if "ingest" in p.parent.name]
    assert record["status"] == "failed" and "ClusterUnreachableError" in record["error"]


def test_a_sealed_token_survives_numpy_scalars(tmp_path: Path) -> None:
    write_json_sealed(tmp_path / "m.json", {"x": float(np.float64(0.1))})
    assert read_json_sealed(tmp_path / "m.json", "m")["x"] == 0.1


@pytest.mark.slow
def test_sigterm_ends_the_run_interrupted_and_keeps_committed_stages(tmp_path: Path) -> None:
    import signal
    import time

    runs, markers = tmp_path / "runs", tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardwalk.pipelines.cli", "run", "tests.slow_pipeline", "--runs-dir", str(runs),
         "--set", f"marker_dir={markers}", "--set", "slow_s=300"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 240
    while not list(markers.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(markers.iterdir()), "the slow stage never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "SIGTERM received" not in err  # Ray's crash reporter never saw it
    assert [line for line in err.splitlines() if line.startswith("shardwalk:")] == [
        "shardwalk: terminated (SIGTERM); committed stages are kept and a rerun resumes from them"]
    (record,) = [json.loads(p.read_text()) for p in (runs / "runs").glob("*/run.json")]
    assert record["status"] == "interrupted" and record["stages"]["total"]["status"] == "interrupted"
    assert record["stages"]["numbers"]["status"] == "done"


# ----------------------------------------------------------------------------- item 8: Parquet page checksums


def test_a_flipped_byte_in_a_checksummed_parquet_page_is_refused_naming_the_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from shardwalk.core.errors import DataError
    from shardwalk.core.storage.files import write_parquet
    from shardwalk.core.storage.sources import read_table

    vectors = pa.array(np.arange(4000, dtype=np.float32).reshape(1000, 4).tolist(), pa.list_(pa.float32(), 4))
    table = pa.table({"id": np.arange(1000), "vector": vectors})
    path = tmp_path / "src.parquet"
    pq.write_table(table, path, compression="none", write_page_checksum=True)  # as any CRC-writing producer
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # inside the vector column's data page
    path.write_bytes(bytes(raw))
    assert not pq.read_table(path).equals(table)  # unverified, the flip is read as data
    with pytest.raises(DataError, match=r"src\.parquet: cannot read Parquet \(.*CRC checksum verification failed"):
        read_table(path)
    ours = write_parquet(table, tmp_path / "ours.parquet")
    assert pq.ParquetFile(ours, page_checksum_verification=True).read().equals(table)
    assert read_table(ours).equals(table)


# ----------------------------------------------------------------------------- item 5: linear duplicate-id check


def test_the_duplicate_id_check_reads_each_part_once_and_finds_the_first_later_row() -> None:
    from shardwalk.core.data.unique import bucket_report, check_unique, id_buckets, split_by_bucket
    from shardwalk.core.errors import DataError

    parts = [(np.array([0, 1, 2]), 0), (np.array([3, 1, 4]), 3), (np.array([5, 6, 3]), 6)]
    buckets = id_buckets(len(parts))
    split = [split_by_bucket(ids, start, buckets) for ids, start in parts]  # one pass per part
    assert sum(len(piece[0]) for pieces in split for piece in pieces) == 9
    reports = [bucket_report([pieces[b] for pieces in split]) for b in range(buckets)]
    with pytest.raises(DataError, match="duplicate value 1 at row 4"):  # row 4 comes before row 8 (id 3)
        check_unique(reports, "src")
    assert id_buckets(1000) == 16 and id_buckets(3) == 3  # buckets do not grow with the shard count
    unique = [split_by_bucket(np.arange(i * 10, i * 10 + 10), i * 10, 4) for i in range(5)]
    assert check_unique([bucket_report([pieces[b] for pieces in unique]) for b in range(4)], "src") == 50


# ----------------------------------------------------------------------------- item 9: work directories


def test_work_directories_of_killed_drivers_are_swept(tmp_path: Path) -> None:
    from shardwalk.workers.index_actors import WORKDIR_PREFIX
    from shardwalk.workers.index_actors import make_workdir as _workdir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    orphan = tmp_path / f"{WORKDIR_PREFIX}w@{host}@{int(dead.stdout)}@abc"
    live = tmp_path / f"{WORKDIR_PREFIX}w@{host}@{os.getpid()}@def"
    remote = tmp_path / f"{WORKDIR_PREFIX}w@another-host@1@ghi"
    for path in (orphan, live, remote):
        path.mkdir()
        (path / "shard-00000.bin").write_bytes(b"x")
    work, _ = _workdir(tmp_path)
    assert not orphan.exists() and live.exists() and remote.exists()
    assert work.name.startswith(f"{WORKDIR_PREFIX}w@{host}@{os.getpid()}@")


# ----------------------------------------------------------------------------- item 5: the actor bound


def test_the_actor_bound_follows_the_cluster_and_can_be_overridden() -> None:
    from shardwalk.core.errors import ConfigError
    from shardwalk.core.plan.limits import actor_bound, actors_requested, check_actors

    gib = 2**30
    assert actor_bound(2, 24 * gib, env={}).limit == 8  # CPU-bound on a 2-core machine
    assert actor_bound(64, 4 * gib, env={}).limit == 8  # memory-bound: 256 MiB each in half of 4 GiB
    assert actor_bound(0.5, 0, env={}).limit == 1
    assert actor_bound(2, 24 * gib, env={"SHARDWALK_MAX_ACTORS": "1000"}).limit == 1000
    with pytest.raises(ConfigError, match="SHARDWALK_MAX_ACTORS must be a positive integer"):
        actor_bound(2, gib, env={"SHARDWALK_MAX_ACTORS": "lots"})
    assert actors_requested({"shards": 4, "replicas": 2}) == 8
    assert actors_requested({"shards": 2, "index": {"sweep_shards": [1, 2, 16]}, "srrw": {"partitions": 3}}) == 16
    check_actors(8, actor_bound(2, 24 * gib, env={}), "index")
    with pytest.raises(ConfigError, match=r"would start 1000 actors .* at most 8 \(4 per CPU × 2 CPUs = 8"):
        check_actors(1000, actor_bound(2, 24 * gib, env={}), "index")

