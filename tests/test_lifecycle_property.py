"""Writers, readers, gc and export interleaved at random (hypothesis), on a local runs dir and on a local S3 server:
every output a run record references stays committed, readable and verified, and holds the right values.

No Ray: stages run on a thread pool (as tests/test_dag.py drives the Runner); steps run up to three operations at
once. Garbage a killed writer would leave (old uncommitted attempts and temporaries) is planted so that gc has
work to do beside live outputs.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardwalk.core.dag.gc import collect
from shardwalk.core.dag.runner import Pipeline, Runner, StageOptions, list_runs
from shardwalk.core.storage import node_cache, sink, store
from shardwalk.core.storage.files import verify_dir
from shardwalk.pipelines.export import export_run

STAGES = cf.ThreadPoolExecutor(max_workers=6)
WRITING_S, GC_PASSES = 0.1, 4


def thread_submit(fn: Any, args: tuple, options: StageOptions) -> cf.Future:
    return STAGES.submit(fn, *args)


def ingest(out: Path, *, n: int) -> dict[str, Any]:
    """The values every later stage derives from (named like the built-in stage)."""
    sink.record([sink.put_parquet(pa.table({"x": list(range(n))}), sink.destination(out), "part-0.parquet")])
    time.sleep(WRITING_S)  # a stage takes a while: gc runs meanwhile
    (out / "n.json").write_text(json.dumps(n))
    return {"n": n}


def knn_graph(out: Path, ingest: Path, *, factor: int) -> dict[str, Any]:
    """Export copies a stage of this name as knn_graph/: the exported values can be checked."""
    n = json.loads((ingest / "n.json").read_text())
    sink.record([sink.put_parquet(pa.table({"x": [i * factor for i in range(n)]}), sink.destination(out), "part-0.parquet")])
    return {"rows": n}


def pipeline(n: int, factor: int) -> Pipeline:
    p = Pipeline("life")
    p.stage("ingest", ingest, params={"n": n})
    p.stage("knn_graph", knn_graph, inputs=["ingest"], params={"factor": factor})
    return p


def expected(record: dict[str, Any]) -> list[int]:
    return [i * record["config"]["factor"] for i in range(record["config"]["n"])]


# ----------------------------------------------------------------------------- operations


def write(runs: str, n: int, factor: int) -> None:
    record = Runner(pipeline(n, factor), runs, thread_submit, config={"n": n, "factor": factor}).run()
    assert record.status == "succeeded", [s.error for s in record.stages.values()]


def _values(runs: str, stage: dict[str, Any]) -> list[int]:
    """A committed stage output's values, after verifying every file against its manifest."""
    if store.is_remote(runs):
        committed = store.require_committed(stage["attempt"])
        store.verify_attempt(committed)
        local, _ = node_cache.materialize(stage["attempt"])
        return pq.read_table(local / "part-0.parquet").column("x").to_pylist()
    verify_dir(stage["output"])
    return pq.read_table(Path(stage["output"]) / "part-0.parquet").column("x").to_pylist()


def read(runs: str) -> None:
    for record in list_runs(runs):
        stages = record["stages"]
        if record["status"] != "succeeded":
            continue  # still running: its outputs are checked once it has recorded them
        assert _values(runs, stages["knn_graph"]) == expected(record), record["run_id"]
        assert _values(runs, stages["ingest"]) == list(range(record["config"]["n"]))


def export(runs: str, target: Path) -> None:
    records = [r for r in list_runs(runs) if r["status"] == "succeeded"]
    if not records:
        return
    record = records[0]
    out = target / uuid.uuid4().hex[:8]
    export_run(record, store.join(runs, "runs", record["run_id"]), str(out))
    assert pq.read_table(out / "knn_graph").column("x").to_pylist() == expected(record)


def gc(runs: str) -> None:
    """A few passes, so that gc overlaps whatever runs beside it."""
    for _ in range(GC_PASSES):
        collect(runs, older_than=0)
        time.sleep(WRITING_S / 2)


def plant_garbage(runs: str) -> None:
    """What a killed writer leaves: an old uncommitted attempt (store) or temporary (local)."""
    if store.is_remote(runs):
        dead = store.join(runs, "cache", "ingest-deadbeef", store.ATTEMPTS, f"20200101T000000-host-1-{uuid.uuid4().hex[:8]}")
        store.write_bytes(store.join(dead, "part-0.parquet"), b"partial")
        return
    name = f".tmp-ingest-deadbeef@host@1@{uuid.uuid4().hex[:8]}"
    aged = Path(runs).parent / name  # aged outside the cache, then moved in whole: a gc beside it may take it at once
    aged.mkdir(parents=True)
    os.utime(aged, (0, 0))
    (Path(runs) / "cache").mkdir(parents=True, exist_ok=True)
    aged.rename(Path(runs) / "cache" / name)


OPERATION = st.one_of(
    st.tuples(st.just("write"), st.integers(1, 3), st.integers(1, 2)),
    st.just(("read",)), st.just(("gc",)), st.just(("export",)), st.just(("plant",)),
)
STEPS = st.lists(st.lists(OPERATION, min_size=1, max_size=3), min_size=2, max_size=5)


def run_steps(runs: str, exports: Path, steps: list[list[tuple]]) -> None:
    actions = {"read": lambda: read(runs), "gc": lambda: gc(runs), "export": lambda: export(runs, exports),
               "plant": lambda: plant_garbage(runs)}
    with cf.ThreadPoolExecutor(max_workers=3) as pool:
        for step in steps:
            futures = [pool.submit(write, runs, op[1], op[2]) if op[0] == "write" else pool.submit(actions[op[0]])
                       for op in step]
            for future in futures:
                future.result()
    gc(runs)
    read(runs)  # after everything and a last gc: still every referenced output readable and verified
    export(runs, exports)


LIFECYCLE = settings(max_examples=6, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _node_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDWALK_LOCAL_CACHE", str(tmp_path / "node-cache"))
    monkeypatch.setenv("SHARDWALK_SCRATCH", str(tmp_path / "scratch"))
    # short leases: gc's grace for a just-committed attempt (not yet in its run's record) is 4 periods
    monkeypatch.setenv("SHARDWALK_LEASE_PERIOD_S", "0.5")


@LIFECYCLE
@given(steps=STEPS)
def test_referenced_outputs_survive_any_interleaving_on_a_local_runs_dir(tmp_path: Path, steps: list[list[tuple]]) -> None:
    base = tmp_path / uuid.uuid4().hex[:8]
    run_steps(str(base / "runs"), base / "exports", steps)


@LIFECYCLE
@given(steps=STEPS)
def test_referenced_outputs_survive_any_interleaving_on_a_store(s3_bucket: str, tmp_path: Path, steps: list[list[tuple]]) -> None:
    key = uuid.uuid4().hex[:8]
    run_steps(f"{s3_bucket}/{key}", tmp_path / key / "exports", steps)
