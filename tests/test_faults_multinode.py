"""Node loss on a simulated cluster (0-CPU head + two 1-CPU workers): the job finishes with the fault-free answer.

All multi-node fault tests share this one module so the cluster starts once. Faults are injected when a
progress marker shows the work is under way (a token checkpoint, a live scoring actor, a stage's marker
file), never after a fixed sleep; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from benchmarks.faultkit import Background, actors, add_node, lose_node, new_actors, poll, walk_problem
from shardwalk.core.storage.files import MANIFEST, verify_dir

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

DEADLINE_S = 120.0


# ----------------------------------------------------------------------------- walker partition on a lost node


STEPS, EVERY = 15_000, 50
WALK: dict[str, Any] = {"alpha": 5.0, "seed": 9, "tokens": 1}


def _checkpointed_n(ckpt: Path) -> int:
    from shardwalk.core.errors import CorruptArtifactError
    from shardwalk.core.srrw import load_token

    try:
        token = load_token(ckpt, 0) if (ckpt / "token-0.json").is_file() else None
    except CorruptArtifactError:  # read while the live walk replaced that checkpoint (its old arrays are gone): again
        return 0
    return token.n if token is not None else 0


def _ended(run: Background) -> bool:
    """Whether a background call has returned (a poll for its progress stops waiting then)."""
    return not run.is_alive()


def test_walk_resumes_from_its_checkpoint_after_losing_a_partitions_node(ray_cluster: Any, tmp_path: Path) -> None:
    from shardwalk.core.srrw import run_sa_srrw
    from shardwalk.workers.walker import run_distributed_sa_srrw

    obj, graph = walk_problem()
    ckpt = tmp_path / "ckpt"
    # One CPU per partition: with two 1-CPU workers each partition sits on its own worker node.
    kw = {**WALK, "partitions": 2, "replicate": False, "num_cpus": 1, "checkpoint_every": EVERY}  # one agent half per node
    before = set(actors("WalkPartition", None))
    # timeout: a cap on a hung walk, not how the loss is found (a dead actor fails `stats` at once); it also bounds
    # the actors' start, which compiles the walk kernels on a fresh clone while the other test workers load the machine
    faulted = Background(lambda: run_distributed_sa_srrw(obj, graph, steps=STEPS, checkpoint_dir=ckpt,
                                                          timeout=120, **kw))
    faulted.start()
    placed = poll("both walker partitions to start", lambda: _ended(faulted) or new_actors("WalkPartition", before, 2))
    assert faulted.is_alive(), f"the walk ended before the fault: {faulted.error!r}"
    poll("the first token checkpoint", lambda: _checkpointed_n(ckpt) > 0)
    lost = sorted(placed.values())[0]
    lose_node(ray_cluster, lost)
    result, error = faulted.outcome()
    assert error is not None, f"the walk finished despite losing a node (n={result and result.tokens[0].n})"
    poll("the faulted run's walkers to be gone", lambda: not (set(actors("WalkPartition")) & set(placed)))
    interrupted_at = _checkpointed_n(ckpt)
    assert 0 < interrupted_at < STEPS, "the node loss must interrupt the walk between checkpoints"
    shutil.copytree(ckpt, tmp_path / "same-checkpoint")

    new_node = add_node(ray_cluster)
    seen = set(actors("WalkPartition", None))
    resumed = run_distributed_sa_srrw(obj, graph, steps=STEPS, checkpoint_dir=ckpt, resume=True, timeout=120, **kw)
    resumed_on = {v for k, v in actors("WalkPartition", None).items() if k not in seen}
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
    "source=builtin:digits", "actors=2", "evaluate.enabled=false", "proxy.models=1", "proxy.epochs=3",
    "proxy.batch_size=64", "select.keep=[0.5,0.2]", 'select.methods=["ccs-aum","ccs-el2n-cb","random"]',
    "select.beta=0.1",  # the node loss is in `score`: a fixed β spares the β-tuning fits (tests/test_coreset_trust.py has them)
]


def _coreset(runs: Path) -> int:
    from shardwalk.pipelines.cli import main

    return main(["run", "coreset", "--runs-dir", str(runs), *[a for s in CORESET_SETS for a in ("--set", s)]])


def _selections(runs: Path) -> dict[str, list[int]]:
    """Every selection table of the committed `select` stage: name -> sorted ids."""
    from shardwalk.core.coresets.selection_names import read_selection

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

    before = set(actors("ScoreShard", None))
    faulted = Background(lambda: _coreset(runs))
    faulted.start()
    placed = poll("the scoring actors to start", lambda: new_actors("ScoreShard", before, 2))
    lose_node(ray_cluster, sorted(placed.values())[0])
    add_node(ray_cluster)  # a replacement node, as an autoscaler would bring: the retried stage needs its CPU
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
    from shardwalk.core.dag.runner import Pipeline

    p = Pipeline("held")
    p.stage("squares", _held, params={"rows": 1000, "marker_dir": str(marker_dir)}, num_cpus=1)
    return p


def test_stage_task_on_a_lost_node_is_retried_by_ray(ray_cluster: Any, tmp_path: Path) -> None:
    import sys

    from ray import cloudpickle

    from shardwalk.core.dag.runner import Runner
    from shardwalk.pipelines.runtime import ray_submit

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    markers = tmp_path / "markers"
    markers.mkdir()
    run = Background(lambda: Runner(_held_pipeline(markers), tmp_path / "runs", ray_submit).run())
    run.start()
    first = poll("the stage's first attempt", lambda: (m := markers / "attempt-1").is_file() and m.read_text())
    lose_node(ray_cluster, first)
    second = poll("Ray to retry the stage elsewhere", lambda: (m := markers / "attempt-2").is_file() and m.read_text())
    record, error = run.outcome()
    assert error is None, error
    assert second != first and record.status == "succeeded"
    assert record.stages["squares"].metrics["attempt"] == 2
    out = Path(record.stages["squares"].output)
    assert pq.read_table(out / "squares.parquet").column("square").to_pylist() == [i * i for i in range(1000)]
    verify_dir(out)
    assert [p.name for p in out.parent.iterdir() if not p.name.startswith(".")] == [out.name]
    add_node(ray_cluster)
