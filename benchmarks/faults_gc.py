"""bench_faults safety scenarios for `gc` (issue 24 item 2), on a local S3 server (moto, 127.0.0.1) and a local dir.

  gc_other_uri_spelling      `run index` with `--runs-dir s3://B/runs` (endpoint from AWS_ENDPOINT_URL), `gc
                             --older-than 1s` with `s3://B/runs?endpoint_override=…&scheme=http`: nothing referenced
                             removed; `query RUN` exits 0, `export RUN` is byte-identical to the export made before gc,
                             a rerun with the other spelling is all cache hits.
  gc_other_uri_spelling_reverse  the same with the spellings swapped (the query-string runs dir runs every stage).
  gc_during_running_stage    `gc --older-than 1s` while `run ingest` writes a large synthetic set on a local runs
                             dir: the running stage's temporary directory (its lease) survives, the run finishes
                             and its committed files equal a clean run's.
  gc_during_running_stage_s3 the same on the S3 server: the running attempt (parts already uploaded) survives.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.faultkit import free_port, poll, scenario_result
from shardwalk.core.storage import store


@contextlib.contextmanager
def _s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with dummy credentials in the environment (Ray workers inherit them)."""
    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    port = free_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_EC2_METADATA_DISABLED": "true"}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True,
                          region="us-east-1").create_dir("gcbench")
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in previous.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _cli(args: list[str]) -> tuple[int, str, str, float]:
    """`shardwalk ARGS` in this process (its Ray): exit code, stdout, the `shardwalk:` lines, seconds."""
    from shardwalk.pipelines.cli import main

    out, err = io.StringIO(), io.StringIO()
    began = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    lines = " | ".join(line for line in err.getvalue().splitlines() if line.startswith("shardwalk:"))
    return code, out.getvalue(), lines, time.perf_counter() - began


def _latest(runs: str) -> dict[str, Any]:
    from shardwalk.core.dag.runner import list_runs

    return list_runs(runs)[0]


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every exported data file: not the marker (when the export was made) nor run.json (it names
    the stage outputs under the runs dir as the exporting command spelled it)."""
    from shardwalk.pipelines.export import MARKER

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (MARKER, "run.json")}


def _queries(work: Path) -> Path:
    import pyarrow.parquet as pq

    from shardwalk.core.data.builtin import load_arrays
    from shardwalk.core.data.schema import from_numpy

    data = load_arrays("builtin:digits")[0][:50]
    path = work / "queries.parquet"
    pq.write_table(from_numpy(data), path)
    return path


def gc_other_uri_spelling(work: Path, endpoint: str, name: str, run_with: str, gc_with: str) -> dict[str, Any]:
    """Run with one spelling of a runs dir, gc with the other; query, export and a rerun must not notice."""
    sets = ["--set", "source=builtin:digits", "--set", "shards=2", "--set", "recall_sample=100"]
    code, _, message, clean_s = _cli(["run", "index", "--runs-dir", run_with, *sets])
    if code != 0:
        return scenario_result(name, False, False, 0.0, 1.0, f"the run with {run_with} exited {code}: {message}")
    run_id = _latest(run_with)["run_id"]
    before = work / f"{name}-before"
    _cli(["export", run_id, str(before), "--runs-dir", run_with])
    began = time.perf_counter()
    code, printed, message, _ = _cli(["gc", "--runs-dir", gc_with, "--older-than", "1s"])
    removed = [line for line in printed.splitlines() if line.startswith("removed ") and " item(s) " not in line]
    queried, _, query_msg, _ = _cli(["query", run_id, "--runs-dir", gc_with, "--queries", str(_queries(work)), "-k", "3"])
    after = work / f"{name}-after"
    exported, _, export_msg, _ = _cli(["export", run_id, str(after), "--runs-dir", gc_with])
    rerun, _, _, _ = _cli(["run", "index", "--runs-dir", gc_with, *sets])
    hits = rerun == 0 and all(s.get("cache_hit") for s in _latest(gc_with)["stages"].values())
    faulted_s = time.perf_counter() - began
    identical = exported == 0 and _tree(before) == _tree(after)
    finished = code == 0 and queried == 0 and hits and not removed
    note = (f"gc exit {code}, removed {len(removed)} item(s); query exit {queried}; export exit {exported}; "
            f"rerun all cache hits: {hits}")
    if not finished:
        note += f" ({message or query_msg or export_msg or removed[:2]})"
    return scenario_result(name, finished, identical, faulted_s, clean_s, note)


def _running_lease(runs: str) -> str | None:
    """The lease of a running ingest stage under `runs` (a local dir or a store prefix), if any."""
    from shardwalk.core.dag import lease
    from shardwalk.core.storage import store

    if not store.is_remote(runs):
        cache = Path(runs) / "cache"
        return next((str(p) for p in cache.glob(f"{lease.PREFIX}ingest-*")), None) if cache.is_dir() else None
    for stage in store.list_dir(store.join(runs, "cache")):
        if stage.base_name.startswith("ingest-"):
            attempts = store.join(runs, "cache", stage.base_name, store.ATTEMPTS)
            found = [i.base_name for i in store.list_dir(attempts) if i.base_name.startswith(lease.PREFIX)]
            if found:
                return store.join(attempts, found[0])
    return None


def _still_there(where: str) -> bool:

    return store.read_bytes(where) is not None if store.is_remote(where) else Path(where).exists()


def _committed(runs: str) -> dict[str, Any]:
    """Each stage's committed files (name -> sha256), from the manifest of what the run recorded."""
    from shardwalk.core.storage.files import read_manifest

    files = {}
    for name, s in _latest(runs)["stages"].items():
        manifest = store.require_committed(s["attempt"]).manifest if s.get("attempt") else read_manifest(s["output"])
        files[name] = {rel: e["sha256"] if isinstance(e, dict) else e for rel, e in manifest["files"].items()}
    return files


def gc_during_running_stage(name: str, clean: str, runs: str, quick: bool) -> dict[str, Any]:
    """`gc --older-than 1s` while ingest writes into `runs`; the run finishes with a clean run's bytes."""
    from shardwalk.core.dag.gc import collect

    n = 100_000 if quick else 200_000
    sets = ["--set", f"source=builtin:synthetic?n={n}&d=64", "--set", "shards=4"]
    code, _, message, clean_s = _cli(["run", "ingest", "--runs-dir", clean, *sets])
    if code != 0:
        return scenario_result(name, False, False, 0.0, 1.0, f"clean run exited {code}: {message}")
    outcome: dict[str, Any] = {}

    def gc_while_running() -> None:
        """gc passes until the stage ends; count those that found its attempt over 1 s old and still running."""
        held = poll("the ingest stage's lease", lambda: _running_lease(runs), timeout=300)
        began, outcome["removed"], outcome["late"] = time.monotonic(), [], 0
        while _still_there(held):
            outcome["removed"] += collect(runs, older_than=1.0)
            outcome["late"] += time.monotonic() - began > 1.0 and _still_there(held)
            time.sleep(0.2)

    thread = threading.Thread(target=gc_while_running, daemon=True)
    thread.start()
    code, _, message, faulted_s = _cli(["run", "ingest", "--runs-dir", runs, *sets])
    thread.join(timeout=300)
    finished = code == 0 and _latest(runs)["status"] == "succeeded"
    identical = finished and _committed(runs) == _committed(clean)
    removed = outcome.get("removed")
    note = (f"{outcome.get('late')} gc pass(es) ran while the stage, over 1 s old, held its lease; removed "
            f"{len(removed) if removed is not None else '?'} item(s)" + (f"; run: {message}" if code else ""))
    return scenario_result(name, finished and removed == [], identical, faulted_s, clean_s, note)


def scenarios(work: Path, quick: bool) -> list[dict[str, Any]]:
    import ray

    from shardwalk.pipelines.runtime import connect

    out: list[dict[str, Any]] = []
    with _s3_server() as endpoint:
        connect(num_cpus=2)  # after the server: Ray workers inherit its endpoint and credentials
        try:
            plain = f"s3://gcbench/{uuid.uuid4().hex[:6]}"
            query = f"{plain}?endpoint_override={endpoint}&scheme=http"
            out.append(gc_other_uri_spelling(work, endpoint, "gc_other_uri_spelling", plain, query))
            plain = f"s3://gcbench/{uuid.uuid4().hex[:6]}"
            query = f"{plain}?endpoint_override={endpoint}&scheme=http"
            out.append(gc_other_uri_spelling(work, endpoint, "gc_other_uri_spelling_reverse", query, plain))
            out.append(gc_during_running_stage("gc_during_running_stage", str(work / "clean"), str(work / "faulted"), quick))
            prefix = f"s3://gcbench/{uuid.uuid4().hex[:6]}"
            out.append(gc_during_running_stage("gc_during_running_stage_s3", f"{prefix}-clean", f"{prefix}-faulted", quick))
        finally:
            ray.shutdown()
    return out


if __name__ == "__main__":  # python -m benchmarks.faults_gc [--quick]: this module's scenarios alone
    import sys
    import tempfile

    print(json.dumps(scenarios(Path(tempfile.mkdtemp(prefix="faults-gc-")), "--quick" in sys.argv), indent=1))
