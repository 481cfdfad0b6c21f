"""Issue 17 hardening on the session Ray: a walk's damaged checkpoint, and --force starting it from scratch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from core.dag import state_dir

pytestmark = pytest.mark.ray

SRRW = ["--set=steps=1200", "--set=checkpoint_every=500", "--set=record_every=400", "--set=alpha=5.0"]


def _stage(runs: Path, run_id: str, name: str) -> dict:
    return json.loads((runs / "runs" / run_id / "run.json").read_text())["stages"][name]


def _last_run(runs: Path) -> str:
    return max((runs / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime).parent.name


def test_a_damaged_walk_checkpoint_names_the_way_out_and_force_recomputes(ray_local, tmp_path, capsys) -> None:
    from pipelines.cli import main

    runs = tmp_path / "runs"
    args = ["run", "srrw", "--runs-dir", str(runs), *SRRW]
    assert main(args) == 0
    walk = Path(_stage(runs, _last_run(runs), "walk")["output"])
    clean = pq.read_table(walk / "tokens.parquet").column("theta").to_pylist()
    state = state_dir(walk)
    assert not state.exists()  # a committed walk keeps no checkpoints
    shutil.rmtree(walk)  # as if the walk had been killed mid-way, leaving a checkpoint that was then damaged
    state.mkdir()
    (state / "token-0.json").write_text('{"node": 8, "n": 500}')
    capsys.readouterr()
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("shardwalk:")]
    assert len(lines) == 1 and "token-0.json" in lines[0] and f"delete {state}" in lines[0] and "--force" in lines[0]
    assert main([*args, "--force"]) == 0
    assert pq.read_table(walk / "tokens.parquet").column("theta").to_pylist() == clean
    assert not state.exists()
