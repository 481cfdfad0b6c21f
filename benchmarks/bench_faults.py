"""Fault scenarios, each run once next to its fault-free twin: did the job finish, with the same answer, how slower?

    python -m benchmarks.bench_faults [--quick] --json OUT.json

Scenarios (the same faults tests/test_faults*.py inject):
  driver_sigkill_rerun            SIGKILL the `shardwalk run coreset` driver while `score` runs; rerun;
                                  every committed output byte-identical to a clean run's.
  hnsw_kill_during_shard_build    kill an HnswShard (restartable) while it builds its shard.
  hnsw_kill_after_shard_persisted kill a shard primary after it persisted, before ShardedIndex.build returns.
  hnsw_kill_during_search_r1      kill a shard's only replica during a many-batch search.
  hnsw_kill_during_search_r2      the same with 2 replicas per shard (fail-over).
  walker_node_loss_resume         remove the node of a walker partition mid-walk (0-CPU head + 2 workers);
                                  add a node; resume from the token checkpoint.
  coreset_node_loss               remove a node while the coreset `score` stage runs, a replacement joins;
                                  the stage is retried in place (rerun if it failed).
"finished": the faulted job (with the documented recovery: restart, fail-over, rerun or resume) completed.
"identical": its result was compared in this run with the fault-free run and matched exactly.
"time_ratio": faulted wall time (including detection and recovery) / fault-free wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from benchmarks.fault_knn_graph import knn_graph_kill
from benchmarks.faultkit import (
    TIMEOUT_S,
    Background,
    actors,
    add_node,
    lose_node,
    new_actors,
    poll,
    simulated_cluster,
    walk_problem,
)

ROOT = Path(__file__).resolve().parents[1]


def _scenario(name: str, finished: bool, identical: bool, faulted_s: float, clean_s: float, note: str) -> dict[str, Any]:
    return {"name": name, "finished": bool(finished), "identical": bool(identical),
            "time_ratio": round(faulted_s / clean_s, 3) if clean_s > 0 else None,
            "faulted_seconds": round(faulted_s, 3), "clean_seconds": round(clean_s, 3), "note": note}


# ----------------------------------------------------------------------------- driver SIGKILL (subprocess)


def _coreset_sets(quick: bool) -> list[str]:
    return ["source=builtin:digits", "shards=2", "evaluate.enabled=false", "proxy.models=1",
            f"proxy.epochs={6 if quick else 15}", "select.rates=[0.5,0.2]", 'select.methods=["ccs-aum","random"]']


def _cli(runs: Path, sets: list[str]) -> subprocess.Popen:
    """`shardwalk run coreset` as its own process (stderr to a file beside the runs dir: never a full pipe)."""
    args = [sys.executable, "-m", "pipelines.cli", "run", "coreset", "--runs-dir", str(runs)]
    args += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs.parent.mkdir(parents=True, exist_ok=True)
    log = open(runs.parent / f"{runs.name}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - closed by the child's exit
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def _stage_status(runs: Path, stage: str) -> str | None:
    for path in (runs / "runs").glob("*/run.json"):
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())["stages"][stage]["status"]
    return None


def _committed_files(runs: Path) -> dict[str, bytes]:
    """Every data file of every committed stage output (not the manifests: they hold timings)."""
    from core.io import MANIFEST

    out = {}
    for stage_dir in sorted((runs / "cache").iterdir()):
        if (stage_dir / MANIFEST).is_file():
            for path in sorted(stage_dir.rglob("*")):
                if path.is_file() and path.name != MANIFEST:
                    out[f"{stage_dir.name}/{path.relative_to(stage_dir)}"] = path.read_bytes()
    return out


def driver_sigkill(work: Path, quick: bool) -> dict[str, Any]:
    sets = _coreset_sets(quick)
    began = time.perf_counter()
    clean = _cli(work / "clean", sets)
    clean.wait(timeout=TIMEOUT_S)
    clean_s = time.perf_counter() - began
    if clean.returncode != 0:
        return _scenario("driver_sigkill_rerun", False, False, 0.0, clean_s, "clean run failed (see its log)")
    runs = work / "killed"
    began = time.perf_counter()
    proc = _cli(runs, sets)
    poll("the score stage to start", lambda: _stage_status(runs, "score") == "running" or proc.poll() is not None)
    killed_while_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)  # the driver only; its embedded Ray notices its owner died
    proc.wait(timeout=60)
    rerun = _cli(runs, sets)
    rerun.wait(timeout=TIMEOUT_S)
    faulted_s = time.perf_counter() - began
    same = rerun.returncode == 0 and _committed_files(runs) == _committed_files(work / "clean")
    note = "killed while score ran; rerun: ingest cache hit" if killed_while_running else "driver ended before the kill"
    return _scenario("driver_sigkill_rerun", rerun.returncode == 0 and killed_while_running, same, faulted_s, clean_s,
                     note + ("" if rerun.returncode == 0 else f"; rerun exited {rerun.returncode}"))


# ----------------------------------------------------------------------------- HnswShard actor kills (local Ray)


@contextlib.contextmanager
def _kill_at(step: str, victim: Callable[[], Any]) -> Iterator[list[bool]]:
    """Kill (restartable) `victim()` when ShardedIndex reaches its `_wait(…, step)`."""
    import ray

    import workers.hnsw_shard as hs

    real, done = hs._wait, []

    def wait(refs: list[Any], what: str, timeout: float | None = None) -> list[Any]:
        if what == step and not done:
            done.append(True)
            ray.kill(victim(), no_restart=False)
        return real(refs, what, timeout)

    with mock.patch.object(hs, "_wait", wait):
        yield done


def _hnsw_build(data: np.ndarray, queries: np.ndarray, replicas: int, fast: dict[str, Any],
                step: str | None = None) -> tuple[Any, float, str]:
    """Build (optionally killing shard 1's primary at `step`) and search; (ids or None, seconds, error)."""
    from workers.hnsw_shard import ShardedIndex

    spawned: list[Any] = []
    real_spawn = ShardedIndex._spawn

    def spawn(*args: Any, **kwargs: Any) -> Any:
        out = real_spawn(*args, **kwargs)
        spawned.extend(row[0] for row in out[0])
        return out

    began = time.perf_counter()
    try:
        with mock.patch.object(ShardedIndex, "_spawn", staticmethod(spawn)), \
                (_kill_at(step, lambda: spawned[1]) if step else contextlib.nullcontext()):
            index = ShardedIndex.build(data, shards=2, replicas=replicas, **fast)
        with index:
            ids = _search_until_ok(index, queries)
        return ids, time.perf_counter() - began, ""
    except Exception as exc:  # the scenario reports it
        return None, time.perf_counter() - began, f"{type(exc).__name__}: {str(exc)[:200]}"


def _search_until_ok(index: Any, queries: np.ndarray, timeout: float = 120.0) -> np.ndarray:
    """Search; while a killed actor is still restarting its calls fail, so retry until it is back."""
    from core.errors import ShardUnavailableError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return index.search(queries, k=10, ef=64, batch_size=4).ids
        except ShardUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _search_killed(index: Any, queries: np.ndarray) -> tuple[Any, float, str]:
    """A many-batch search whose shard-0 primary is killed while its batches are queued."""
    import ray

    victim = index.actors[0][0]
    blocker = np.random.default_rng(0).normal(size=(40_000, queries.shape[1])).astype(np.float32)
    victim.search.remote(blocker, 10, 400)  # keeps it busy: every batch it is sent is still queued at the kill
    real_get, killed = ray.get, []

    def get(refs: Any, *args: Any, **kwargs: Any) -> Any:
        if not killed:
            killed.append(True)
            ray.kill(victim, no_restart=False)
        return real_get(refs, *args, **kwargs)

    began = time.perf_counter()
    try:
        with mock.patch.object(ray, "get", get):
            ids = index.search(queries, k=10, ef=64, batch_size=4).ids
        return ids, time.perf_counter() - began, ""
    except Exception as exc:
        return None, time.perf_counter() - began, f"{type(exc).__name__}: {str(exc)[:200]}"


def hnsw_scenarios(quick: bool) -> list[dict[str, Any]]:
    from core.datasets import synthetic
    from workers.hnsw_shard import ShardedIndex

    n, d = (1500, 16) if quick else (5000, 32)
    data = synthetic(n=n, d=d, seed=11)[0]
    rng = np.random.default_rng(3)
    queries = data[rng.choice(n, 300, replace=False)] + rng.normal(scale=0.05, size=(300, d)).astype(np.float32)
    fast = {"M": 8, "ef_construction": 64, "cpus_per_actor": 0}  # one thread: builds are deterministic
    out = []
    clean_ids, clean_s, _ = _hnsw_build(data, queries, 1, fast)
    ids, faulted_s, err = _hnsw_build(data, queries, 1, fast, step="insert pieces")
    out.append(_scenario("hnsw_kill_during_shard_build", ids is not None,
                         ids is not None and np.array_equal(ids, clean_ids), faulted_s, clean_s,
                         err or "built again from the source with new shard actors"))
    clean2, clean2_s, _ = _hnsw_build(data, queries, 2, fast)
    holder: dict[str, Any] = {}
    real_add = ShardedIndex._add_replicas

    def add_replicas(self: Any, cpus: float) -> None:
        holder["index"] = self
        real_add(self, cpus)

    began = time.perf_counter()
    with mock.patch.object(ShardedIndex, "_add_replicas", add_replicas), \
            _kill_at("start replicas", lambda: holder["index"].actors[1][0]):
        ids, _, err = _hnsw_build(data, queries, 2, fast)
    out.append(_scenario("hnsw_kill_after_shard_persisted", ids is not None,
                         ids is not None and np.array_equal(ids, clean2), time.perf_counter() - began, clean2_s,
                         err or "restarted actor reloaded its persisted shard"))
    for replicas in (1, 2):
        with ShardedIndex.build(data, shards=2, replicas=replicas, **fast) as index:
            began = time.perf_counter()
            ref = index.search(queries, k=10, ef=64, batch_size=4).ids
            clean_s = time.perf_counter() - began
            ids, faulted_s, err = _search_killed(index, queries)
        out.append(_scenario(f"hnsw_kill_during_search_r{replicas}", ids is not None,
                             ids is not None and np.array_equal(ids, ref), faulted_s, clean_s,
                             err or ("failed over to the other replica" if replicas > 1 else "retried on the restarted actor")))
    return out


# ----------------------------------------------------------------------------- node loss (simulated cluster)


def walker_node_loss(cluster: Any, work: Path, quick: bool) -> dict[str, Any]:
    from core.srrw import load_token
    from workers.walker import run_distributed_sa_srrw

    obj, graph = walk_problem()
    steps = 15_000 if quick else 40_000
    kw = {"alpha": 5.0, "seed": 9, "tokens": 1, "partitions": 2, "num_cpus": 1, "checkpoint_every": 50}
    began = time.perf_counter()
    clean = run_distributed_sa_srrw(obj, graph, steps=steps, checkpoint_dir=work / "clean", timeout=TIMEOUT_S, **kw)
    clean_s = time.perf_counter() - began

    ckpt = work / "faulted"
    before = set(actors("WalkPartition", None))
    began = time.perf_counter()
    # A lost partition surfaces through the walk's health check (RayActorError), or else its timeout.
    run = Background(lambda: run_distributed_sa_srrw(obj, graph, steps=steps, checkpoint_dir=ckpt,
                                                      timeout=max(10.0, 3 * clean_s), **kw))
    run.start()
    placed = poll("the walkers", lambda: new_actors("WalkPartition", before, 2))
    poll("a token checkpoint", lambda: (ckpt / "token-0.json").is_file())
    lose_node(cluster, sorted(placed.values())[0])
    run.join(TIMEOUT_S)
    if run.error is None:
        return _scenario("walker_node_loss_resume", True, False, time.perf_counter() - began, clean_s,
                         "the walk ended before the node loss took effect (not a fault run)")
    poll("the faulted walkers to stop", lambda: not (set(actors("WalkPartition")) & set(placed)))
    at = load_token(ckpt, 0).n
    add_node(cluster)
    resumed = run_distributed_sa_srrw(obj, graph, steps=steps, checkpoint_dir=ckpt, resume=True, timeout=TIMEOUT_S, **kw)
    faulted_s = time.perf_counter() - began
    same = all(np.array_equal(a.theta, b.theta) and a.logy == b.logy for a, b in zip(resumed.tokens, clean.tokens))
    return _scenario("walker_node_loss_resume", True, same, faulted_s, clean_s,
                     f"driver gave up with {type(run.error).__name__}; resumed from step {at} of {steps}")


def coreset_node_loss(cluster: Any, work: Path, quick: bool) -> dict[str, Any]:
    from pipelines.cli import main

    sets = _coreset_sets(quick)

    def run(runs: Path) -> int:
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            return main(["run", "coreset", "--runs-dir", str(runs), *[a for s in sets for a in ("--set", s)]])

    began = time.perf_counter()
    code = run(work / "clean")
    clean_s = time.perf_counter() - began
    if code != 0:
        return _scenario("coreset_node_loss", False, False, 0.0, clean_s, "clean run failed")
    runs = work / "faulted"
    before = set(actors("ScoreShard", None))
    began = time.perf_counter()
    job = Background(lambda: run(runs))
    job.start()
    placed = poll("the scoring actors", lambda: new_actors("ScoreShard", before, 2))
    lose_node(cluster, sorted(placed.values())[0])
    add_node(cluster)  # as an autoscaler would: the retried stage needs the lost node's CPU
    job.join(TIMEOUT_S)
    if job.is_alive():  # never start a second run beside it: both would redirect the process's stdout
        return _scenario("coreset_node_loss", False, False, time.perf_counter() - began, clean_s,
                         f"the faulted run did not finish within {TIMEOUT_S:.0f} s")
    note = "score stage retried in place"
    if job.result != 0:
        record = max((json.loads(p.read_text()) for p in (runs / "runs").glob("*/run.json")), key=lambda r: r["started"])
        error = (record["stages"]["score"].get("error") or "").split("\n")[0][:120]
        note = f"score stage failed ({error}); the rerun resumed after ingest"
        job = Background(lambda: run(runs))
        job.run()
    faulted_s = time.perf_counter() - began
    finished = job.result == 0
    same = finished and {k: v for k, v in _committed_files(runs).items() if k.startswith(("select", "score"))} == {
        k: v for k, v in _committed_files(work / "clean").items() if k.startswith(("select", "score"))}
    return _scenario("coreset_node_loss", finished, same, faulted_s, clean_s, note)


def cluster_scenarios(work: Path, quick: bool) -> list[dict[str, Any]]:
    with simulated_cluster() as cluster:
        (work / "walk").mkdir()
        (work / "coreset").mkdir()
        return [walker_node_loss(cluster, work / "walk", quick), coreset_node_loss(cluster, work / "coreset", quick)]


# ----------------------------------------------------------------------------- report


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="bench_faults — each fault next to its fault-free run")
    for col in ("scenario", "finished", "identical", "time ratio", "note"):
        table.add_column(col)
    for s in result["scenarios"]:
        table.add_row(s["name"], "yes" if s["finished"] else "NO", "yes" if s["identical"] else "NO",
                      f"{s['time_ratio']:.2f}" if s["time_ratio"] is not None else "-", Text(s["note"]))  # notes quote errors
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="smaller data and walks")
    parser.add_argument("--only", default="", help="comma-separated subset: driver,hnsw,cluster")
    args = parser.parse_args(argv)
    groups = set(filter(None, args.only.split(","))) or {"driver", "hnsw", "cluster"}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    scenarios: list[dict[str, Any]] = []
    try:
        if "driver" in groups:
            scenarios.append(driver_sigkill(work, args.quick))
        if "hnsw" in groups:
            import ray

            from pipelines.runtime import connect

            connect(num_cpus=2)
            try:
                scenarios += hnsw_scenarios(args.quick)
                scenarios.append(knn_graph_kill(args.quick))
            finally:
                ray.shutdown()
        if "cluster" in groups:
            scenarios += cluster_scenarios(work, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"quick": args.quick, "scenarios": scenarios}
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
