"""Node loss on a simulated cluster (0-CPU head + two 1-CPU workers): the job finishes with the fault-free answer.

All multi-node fault tests share this one module so the cluster starts once. Faults are injected when a
progress marker shows the work is under way (a token checkpoint, a live scoring actor, a stage's marker
file), never after a fixed sleep; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from core.io import MANIFEST, verify_dir

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

DEADLINE_S = 120.0


def _poll(what: str, ready: Callable[[], Any], timeout: float = DEADLINE_S) -> Any:
    """Call `ready` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _actors(class_name: str, state: str | None = "ALIVE") -> dict[str, str]:
    """actor id -> node id of the actors of one class (read from the GCS; no dashboard needed)."""
    out = {}
    for actor_id, info in ray._private.state.actors().items():
        if info.get("ActorClassName", "").endswith(class_name) and (state is None or info.get("State") == state):
            out[actor_id] = info.get("Address", {}).get("NodeID", "")
    return out


def _remove_node_of(cluster: Any, node_id: str) -> None:
    """Hard-remove the worker node `node_id` (its raylet and workers die) and add a fresh 1-CPU node."""
    victim = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(victim, allow_graceful=False)
    _poll("the removed node to be marked dead",
          lambda: not any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()))


def _add_node(cluster: Any) -> str:
    node = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    _poll("the new node's CPU", lambda: ray.cluster_resources().get("CPU", 0) >= 2)
    return node.node_id


class _Background(threading.Thread):
    """Runs a call in a thread and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # reported by the test, which expects the fault to surface
            self.error = exc

    def outcome(self, timeout: float = DEADLINE_S) -> tuple[Any, BaseException | None]:
        self.join(timeout)
        assert not self.is_alive(), "the faulted call never returned"
        return self.result, self.error


# ----------------------------------------------------------------------------- walker partition on a lost node


def _objective() -> tuple[Any, Any]:
    from benchmarks.bench_faults import walk_problem

    return walk_problem()


STEPS, EVERY = 15_000, 50
WALK: dict[str, Any] = {"alpha": 5.0, "seed": 9, "tokens": 1}


def _checkpointed_n(ckpt: Path) -> int:
    from core.srrw import load_token

    token = load_token(ckpt, 0) if (ckpt / "token-0.json").is_file() else None
    return token.n if token is not None else 0


def test_walk_resumes_from_its_checkpoint_after_losing_a_partitions_node(ray_cluster: Any, tmp_path: Path) -> None:
    from core.srrw import run_sa_srrw
    from workers.walker import run_distributed_sa_srrw

    obj, graph = _objective()
    ckpt = tmp_path / "ckpt"
    # One CPU per partition: with two 1-CPU workers each partition sits on its own worker node.
    kw = {**WALK, "partitions": 2, "num_cpus": 1, "checkpoint_every": EVERY}
    before = set(_actors("WalkPartition", None))
    faulted = _Background(lambda: run_distributed_sa_srrw(obj, graph, steps=STEPS, checkpoint_dir=ckpt,
                                                          timeout=20, **kw))
    faulted.start()
    placed = _poll("both walker partitions to start",
                   lambda: (a := {k: v for k, v in _actors("WalkPartition").items() if k not in before}) and len(a) == 2 and a)
    _poll("the first token checkpoint", lambda: _checkpointed_n(ckpt) > 0)
    lost = sorted(placed.values())[0]
    _remove_node_of(ray_cluster, lost)
    result, error = faulted.outcome()
    assert error is not None, f"the walk finished despite losing a node (n={result and result.tokens[0].n})"
    _poll("the faulted run's walkers to be gone", lambda: not (set(_actors("WalkPartition")) & set(placed)))
    interrupted_at = _checkpointed_n(ckpt)
    assert 0 < interrupted_at < STEPS, "the node loss must interrupt the walk between checkpoints"
    shutil.copytree(ckpt, tmp_path / "same-checkpoint")

    new_node = _add_node(ray_cluster)
    seen = set(_actors("WalkPartition", None))
    resumed = run_distributed_sa_srrw(obj, graph, steps=STEPS, checkpoint_dir=ckpt, resume=True, timeout=120, **kw)
    resumed_on = {v for k, v in _actors("WalkPartition", None).items() if k not in seen}
    assert lost not in resumed_on and new_node in resumed_on, resumed_on

    # The same checkpoint, resumed without any fault, and the uninterrupted single-process reference.
    again = run_distributed_sa_srrw(obj, graph, steps=STEPS, checkpoint_dir=tmp_path / "same-checkpoint",
                                    resume=True, timeout=120, **kw)
    reference = run_sa_srrw(obj, graph, steps=STEPS, **WALK)
    for got, clean, ref in zip(resumed.tokens, again.tokens, reference.tokens):
        assert got.n == clean.n == ref.n == STEPS
        np.testing.assert_array_equal(got.theta, clean.theta)
        np.testing.assert_array_equal(got.theta, ref.theta)
        assert got.logy == ref.logy


# ----------------------------------------------------------------------------- coreset scoring on a lost node

CORESET_SETS = [
    "source=builtin:digits", "shards=2", "evaluate.enabled=false", "proxy.models=1", "proxy.epochs=10",
    "proxy.batch_size=64", "select.rates=[0.5,0.2]", 'select.methods=["ccs-aum","ccs-el2n-cb","random"]',
]


def _coreset(runs: Path) -> int:
    from pipelines.cli import main

    return main(["run", "coreset", "--runs-dir", str(runs), *[a for s in CORESET_SETS for a in ("--set", s)]])


def _selections(runs: Path) -> dict[str, list[int]]:
    """Every selection table of the committed `select` stage: name -> sorted ids."""
    from workers.scorer import read_selection

    (select,) = [p for p in (runs / "cache").glob("select-*") if (p / MANIFEST).is_file()]
    return {p.name: read_selection(p).tolist() for p in sorted(select.iterdir()) if p.is_dir()}


def _scores(runs: Path) -> pa.Table:
    (score,) = [p for p in (runs / "cache").glob("score-*") if (p / MANIFEST).is_file()]
    return pq.read_table(score).sort_by("id")


def _records(runs: Path) -> list[dict[str, Any]]:
    return sorted((json.loads(p.read_text()) for p in (runs / "runs").glob("*/run.json")), key=lambda r: r["started"])


def test_coreset_selection_survives_losing_a_scoring_node(ray_cluster: Any, tmp_path: Path) -> None:
    clean_runs, runs = tmp_path / "clean", tmp_path / "runs"
    assert _coreset(clean_runs) == 0
    clean = _selections(clean_runs)

    before = set(_actors("ScoreShard", None))
    faulted = _Background(lambda: _coreset(runs))
    faulted.start()
    placed = _poll("the scoring actors to start",
                   lambda: (a := {k: v for k, v in _actors("ScoreShard").items() if k not in before}) and len(a) == 2 and a)
    _remove_node_of(ray_cluster, sorted(placed.values())[0])
    _add_node(ray_cluster)  # a replacement node, as an autoscaler would bring: the retried stage needs its CPU
    code, error = faulted.outcome()
    assert error is None, error
    first = _records(runs)[-1]
    if code != 0:  # the stage could not be retried in place: the run says which stage failed, a rerun resumes
        assert first["stages"]["score"]["status"] == "failed" and first["stages"]["ingest"]["status"] == "done"
        assert not [p for p in (runs / "cache").glob("score-*") if (p / MANIFEST).is_file()]
        assert _coreset(runs) == 0
        second = _records(runs)[-1]
        assert second["stages"]["ingest"]["cache_hit"] and second["stages"]["score"]["status"] == "done"
    assert _selections(runs) == clean
    assert _scores(runs).equals(_scores(clean_runs))


# ----------------------------------------------------------------------------- a stage task on a lost node


def _held(out: Path, *, rows: int, marker_dir: str) -> dict[str, Any]:
    """A 1-CPU stage (so it runs on a worker node) that waits, on its first attempt only, for a release file."""
    markers = Path(marker_dir)
    attempt = len(list(markers.glob("attempt-*"))) + 1
    (markers / f"attempt-{attempt}").write_text(ray.get_runtime_context().get_node_id())
    deadline = time.monotonic() + DEADLINE_S
    while attempt == 1 and not (markers / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    values = np.arange(rows, dtype=np.int64)
    pq.write_table(pa.table({"id": values, "square": values * values}), out / "squares.parquet")
    return {"attempt": attempt, "pid": os.getpid()}


def _held_pipeline(marker_dir: Path) -> Any:
    from core.dag import Pipeline

    p = Pipeline("held")
    p.stage("squares", _held, params={"rows": 1000, "marker_dir": str(marker_dir)}, num_cpus=1)
    return p


def test_stage_task_on_a_lost_node_is_retried_by_ray(ray_cluster: Any, tmp_path: Path) -> None:
    import sys

    from ray import cloudpickle

    from core.dag import Runner
    from pipelines.runtime import ray_submit

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    markers = tmp_path / "markers"
    markers.mkdir()
    run = _Background(lambda: Runner(_held_pipeline(markers), tmp_path / "runs", ray_submit).run())
    run.start()
    first = _poll("the stage's first attempt", lambda: (m := markers / "attempt-1").is_file() and m.read_text())
    _remove_node_of(ray_cluster, first)
    second = _poll("Ray to retry the stage elsewhere", lambda: (m := markers / "attempt-2").is_file() and m.read_text())
    record, error = run.outcome()
    assert error is None, error
    assert second != first and record.status == "succeeded"
    assert record.stages["squares"].metrics["attempt"] == 2
    out = Path(record.stages["squares"].output)
    assert pq.read_table(out / "squares.parquet").column("square").to_pylist() == [i * i for i in range(1000)]
    verify_dir(out)
    assert [p.name for p in out.parent.iterdir() if not p.name.startswith(".")] == [out.name]
    _add_node(ray_cluster)
