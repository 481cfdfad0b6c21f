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
Hardening (issue 17; a refusal is the documented outcome where noted):
  force_after_finished_walk       `--force` after a finished srrw run recomputes the walk from step 0; identical.
  corrupt_checkpoint_json         an edited "node" in a walk's token checkpoint: refused, exit 2, the line says
                                  what to delete and that --force recomputes; then `--force` finishes, identical.
  hostile_index_manifest          a shard manifest naming ../probe.txt, _SUCCESS removed: `shardwalk query`
                                  refused (exit 2), nothing written outside the index.
  wrong_address_*                 `run --force --address` to a closed port / a local listener that accepts and never
                                  answers (127.0.0.1: benchmarks reach loopback only): one line, exit 1
                                  within SHARDWALK_CONNECT_TIMEOUT_S, run record `failed`, committed outputs kept.
  full_disk_run_record            the runs directory on a full 64 KiB tmpfs (or a simulated ENOSPC where mounting
                                  is not allowed): one line, exit 1, no zero-byte temporary.
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
    free_port,
    lose_node,
    new_actors,
    poll,
    refusal_result,
    run_cli,
    scenario_result,
    simulated_cluster,
    walk_problem,
)

ROOT = Path(__file__).resolve().parents[1]
# Data-safety and trust scenarios (issues 24 and 25), one module each: `scenarios(work, quick) -> list[dict]`
# built with faultkit.scenario_result / refusal_result. Each starts whatever it needs (Ray, a local S3 server).
SAFETY_MODULES: tuple[str, ...] = (
    "faults_exports",
    "faults_cache",
    "faults_trust",
    "faults_reads",
    "faults_gc",
)


# ----------------------------------------------------------------------------- driver SIGKILL (subprocess)


def _coreset_sets(quick: bool) -> list[str]:
    return ["source=builtin:digits", "actors=2", "evaluate.enabled=false", "proxy.models=1",
            f"proxy.epochs={6 if quick else 15}", "select.keep=[0.5,0.2]", 'select.methods=["ccs-aum","random"]']


def _cli(runs: Path, sets: list[str]) -> subprocess.Popen:
    """`shardwalk run coreset` as its own process (stderr to a file beside the runs dir: never a full pipe)."""
    args = [sys.executable, "-m", "shardwalk.pipelines.cli", "run", "coreset", "--runs-dir", str(runs)]
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
    from shardwalk.core.storage.files import MANIFEST

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
        return scenario_result("driver_sigkill_rerun", False, False, 0.0, clean_s, "clean run failed (see its log)")
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
    return scenario_result("driver_sigkill_rerun", rerun.returncode == 0 and killed_while_running, same, faulted_s, clean_s,
                     note + ("" if rerun.returncode == 0 else f"; rerun exited {rerun.returncode}"))


# ----------------------------------------------------------------------------- HnswShard actor kills (local Ray)


@contextlib.contextmanager
def _kill_at(step: str, victim: Callable[[], Any]) -> Iterator[list[bool]]:
    """Kill (restartable) `victim()` when ShardedIndex reaches its `raykit.wait_all(…, step)`."""
    import ray

    from shardwalk.workers import raykit

    real, done = raykit.wait_all, []

    def wait(refs: list[Any], what: str, timeout: float | None = None) -> list[Any]:
        if what == step and not done:
            done.append(True)
            ray.kill(victim(), no_restart=False)
        return real(refs, what, timeout)

    with mock.patch.object(raykit, "wait_all", wait):
        yield done


def _hnsw_build(data: np.ndarray, queries: np.ndarray, replicas: int, fast: dict[str, Any],
                step: str | None = None) -> tuple[Any, float, str]:
    """Build (optionally killing shard 1's primary at `step`) and search; (ids or None, seconds, error)."""
    from shardwalk.workers.sharded_index import ShardedIndex

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
    from shardwalk.core.errors import ShardUnavailableError

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
    from shardwalk.core.data.builtin import synthetic
    from shardwalk.workers.sharded_index import ShardedIndex

    n, d = (1500, 16) if quick else (5000, 32)
    data = synthetic(n=n, d=d, seed=11)[0]
    rng = np.random.default_rng(3)
    queries = data[rng.choice(n, 300, replace=False)] + rng.normal(scale=0.05, size=(300, d)).astype(np.float32)
    fast = {"M": 8, "ef_construction": 64, "cpus_per_actor": 0}  # one thread: builds are deterministic
    out = []
    clean_ids, clean_s, _ = _hnsw_build(data, queries, 1, fast)
    ids, faulted_s, err = _hnsw_build(data, queries, 1, fast, step="insert pieces")
    out.append(scenario_result("hnsw_kill_during_shard_build", ids is not None,
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
    out.append(scenario_result("hnsw_kill_after_shard_persisted", ids is not None,
                         ids is not None and np.array_equal(ids, clean2), time.perf_counter() - began, clean2_s,
                         err or "restarted actor reloaded its persisted shard"))
    for replicas in (1, 2):
        with ShardedIndex.build(data, shards=2, replicas=replicas, **fast) as index:
            began = time.perf_counter()
            ref = index.search(queries, k=10, ef=64, batch_size=4).ids
            clean_s = time.perf_counter() - began
            ids, faulted_s, err = _search_killed(index, queries)
        out.append(scenario_result(f"hnsw_kill_during_search_r{replicas}", ids is not None,
                             ids is not None and np.array_equal(ids, ref), faulted_s, clean_s,
                             err or ("failed over to the other replica" if replicas > 1 else "retried on the restarted actor")))
    return out


# ----------------------------------------------------------------------------- node loss (simulated cluster)


def walker_node_loss(cluster: Any, work: Path, quick: bool) -> dict[str, Any]:
    from shardwalk.core.srrw import load_token
    from shardwalk.workers.walker import run_distributed_sa_srrw

    obj, graph = walk_problem()
    steps = 15_000 if quick else 40_000
    kw = {"alpha": 5.0, "seed": 9, "tokens": 1, "partitions": 2, "replicate": False, "num_cpus": 1, "checkpoint_every": 50}
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
        return scenario_result("walker_node_loss_resume", True, False, time.perf_counter() - began, clean_s,
                         "the walk ended before the node loss took effect (not a fault run)")
    poll("the faulted walkers to stop", lambda: not (set(actors("WalkPartition")) & set(placed)))
    at = load_token(ckpt, 0).n
    add_node(cluster)
    resumed = run_distributed_sa_srrw(obj, graph, steps=steps, checkpoint_dir=ckpt, resume=True, timeout=TIMEOUT_S, **kw)
    faulted_s = time.perf_counter() - began
    same = all(np.array_equal(a.theta, b.theta) and a.logy == b.logy for a, b in zip(resumed.tokens, clean.tokens))
    return scenario_result("walker_node_loss_resume", True, same, faulted_s, clean_s,
                     f"driver gave up with {type(run.error).__name__}; resumed from step {at} of {steps}")


def coreset_node_loss(cluster: Any, work: Path, quick: bool) -> dict[str, Any]:
    from shardwalk.pipelines.cli import main

    sets = _coreset_sets(quick)

    def run(runs: Path) -> int:
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            return main(["run", "coreset", "--runs-dir", str(runs), *[a for s in sets for a in ("--set", s)]])

    began = time.perf_counter()
    code = run(work / "clean")
    clean_s = time.perf_counter() - began
    if code != 0:
        return scenario_result("coreset_node_loss", False, False, 0.0, clean_s, "clean run failed")
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
        return scenario_result("coreset_node_loss", False, False, time.perf_counter() - began, clean_s,
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
    return scenario_result("coreset_node_loss", finished, same, faulted_s, clean_s, note)


def cluster_scenarios(work: Path, quick: bool) -> list[dict[str, Any]]:
    with simulated_cluster() as cluster:
        (work / "walk").mkdir()
        (work / "coreset").mkdir()
        return [walker_node_loss(cluster, work / "walk", quick), coreset_node_loss(cluster, work / "coreset", quick)]


# ----------------------------------------------------------------------------- hardening (issue 17)


def _in_process(args: list[str]) -> tuple[int, str, float]:
    """`shardwalk ARGS` in this process (the session's Ray): exit code, its `shardwalk:` lines, seconds."""
    import io

    from shardwalk.pipelines.cli import main

    err = io.StringIO()
    began = time.perf_counter()
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(err), contextlib.redirect_stdout(sink):
        code = main(args)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("shardwalk:")]
    return code, " | ".join(lines), time.perf_counter() - began


def _subprocess(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """`shardwalk ARGS` as its own process (a fresh driver, no Ray yet): exit code, `shardwalk:` lines, seconds."""
    code, lines, _, seconds = run_cli(args, env)
    return code, lines, seconds


def _walk_tokens(runs: Path) -> tuple[Path, Any]:
    import pyarrow.parquet as pq

    record = max((json.loads(p.read_text()) for p in (runs / "runs").glob("*/run.json")), key=lambda r: r["started"])
    walk = Path(record["stages"]["walk"]["output"])
    return walk, pq.read_table(walk / "tokens.parquet").column("theta").to_pylist()


def walk_scenarios(work: Path, quick: bool) -> list[dict[str, Any]]:
    """An edited checkpoint JSON is refused with what to do; `--force` recomputes a finished walk from scratch."""
    from shardwalk.core.dag.attempt import state_dir

    runs = work / "runs"
    args = ["run", "srrw", "--runs-dir", str(runs), f"--set=steps={4000 if quick else 20000}", "--set=checkpoint_every=500"]
    code, _, clean_s = _in_process(args)
    if code != 0:
        return [scenario_result("srrw_clean_run", False, False, 0.0, 1.0, f"the clean srrw run exited {code}")]
    walk, clean = _walk_tokens(runs)
    forced, _, forced_s = _in_process([*args, "--force"])
    record = max((json.loads(p.read_text()) for p in (runs / "runs").glob("*/run.json")), key=lambda r: r["started"])
    recomputed = record["stages"]["walk"]["status"] == "done"
    out = [scenario_result("force_after_finished_walk", forced == 0 and recomputed, forced == 0 and _walk_tokens(runs)[1] == clean,
                     forced_s, clean_s, "walk recomputed from step 0 (no checkpoint kept after commit, state retired by --force)"
                     if recomputed else "the walk was not recomputed")]
    # a walk killed mid-way leaves its checkpoint; someone edits `"node"` in it
    shutil.rmtree(walk)
    state = state_dir(walk)
    state.mkdir(parents=True, exist_ok=True)
    from shardwalk.core.srrw import SRRW, Schedule, make_tokens, save_token

    obj, graph = walk_problem()
    token = make_tokens(SRRW(graph, 5.0, "mhrw"), obj.dim, Schedule(), seed=0)[0]
    manifest = save_token(state, token)
    manifest.write_text(manifest.read_text().replace(f'"node": {token.node}', f'"node": {token.node + 1}'))
    code, message, refused_s = _in_process(args)
    ok = "token-0.json" in message and "--force" in message and f"delete {state}" in message
    out.append(refusal_result("corrupt_checkpoint_json", code, 2, message, ok, refused_s, "edited 'node' in token-0.json"))
    code, _, rerun_s = _in_process([*args, "--force"])
    out.append(scenario_result("corrupt_checkpoint_json_then_force", code == 0, code == 0 and _walk_tokens(runs)[1] == clean,
                         rerun_s, clean_s, "--force retired the damaged checkpoint and walked from scratch"))
    return out


def hostile_manifest(work: Path) -> dict[str, Any]:
    """The issue-17 item-1 repro: a shard manifest naming ../probe.txt, the commit marker removed."""
    import hashlib

    import pyarrow.parquet as pq

    from shardwalk.core.data.builtin import synthetic
    from shardwalk.core.data.schema import from_numpy
    from shardwalk.core.index import hnsw
    from shardwalk.core.storage.files import MANIFEST
    from shardwalk.workers.sharded_index import ShardedIndex

    data = synthetic(n=1500, d=16, seed=11)[0]
    index_dir = work / "hostile" / "index"
    with ShardedIndex.build(data, shards=2, M=8, ef_construction=64, cpus_per_actor=0) as index:
        index.save(index_dir)
    payload = index_dir.parent / "probe.txt"
    payload.write_text("written by a hostile manifest")
    shard = index_dir / hnsw.shard_manifest_file(0)
    manifest = json.loads(shard.read_text())
    manifest["files"]["../probe.txt"] = hashlib.sha256(payload.read_bytes()).hexdigest()
    shard.write_text(json.dumps(manifest))
    (index_dir / MANIFEST).unlink()
    queries = index_dir.parent / "q.parquet"
    pq.write_table(from_numpy(data[:5]), queries)
    before = sorted(p.name for p in index_dir.parent.rglob("*"))
    code, message, seconds = _in_process(["query", str(index_dir), "--queries", str(queries), "-k", "3"])
    untouched = sorted(p.name for p in index_dir.parent.rglob("*")) == before
    return refusal_result("hostile_index_manifest", code, 2, message, untouched and "not committed" in message, seconds,
                    "nothing written outside the index" if untouched else "FILES CHANGED outside the index")


@contextlib.contextmanager
def _silent_listener() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections and never answers (a hung or firewalled head); closed after."""
    import socket
    import threading

    held: list[socket.socket] = []
    stop = threading.Event()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.settimeout(0.1)

        def accept() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    held.append(server.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield server.getsockname()[1]
        finally:
            stop.set()
            thread.join()
            for conn in held:
                conn.close()


def wrong_address(work: Path) -> list[dict[str, Any]]:
    """A wrong --address with --force: one line, exit 1, within the connect timeout, nothing committed deleted."""
    runs = work / "address"
    sets = ["--set", "source=builtin:digits"]
    code, _, _ = _subprocess(["run", "ingest", "--runs-dir", str(runs), *sets])
    committed = sorted(p.name for p in (runs / "cache").iterdir()) if code == 0 else None
    out = []
    with _silent_listener() as silent:
        for name, address in (("wrong_address_refused", f"127.0.0.1:{free_port()}"),
                              ("wrong_address_silent", f"127.0.0.1:{silent}")):
            out.append(_wrong_address(runs, sets, committed, name, address))
    return out


def _wrong_address(runs: Path, sets: list[str], committed: list[str] | None, name: str, address: str) -> dict[str, Any]:
    """One `run --force --address ADDRESS` that must be refused: one line, exit 1, record failed, outputs kept."""
    code, message, seconds = _subprocess(["run", "ingest", "--runs-dir", str(runs), "--force", *sets,
                                          "--address", address], env={"SHARDWALK_CONNECT_TIMEOUT_S": "10"})
    kept = committed is not None and sorted(p.name for p in (runs / "cache").iterdir()) == committed
    record = max((json.loads(p.read_text()) for p in (runs / "runs").glob("*/run.json")), key=lambda r: r["started"])
    ok = kept and message.count("shardwalk:") == 1 and record["status"] == "failed"
    return refusal_result(name, code, 1, message, ok, seconds,
                          f"run record '{record['status']}'; committed outputs {'kept' if kept else 'NOT kept'}")


@contextlib.contextmanager
def _full_filesystem(work: Path) -> Iterator[tuple[Path, str]]:
    """A tiny tmpfs filled to the last byte (root and `mount` needed), else a simulated ENOSPC on every write."""
    mount = work / "full"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                             capture_output=True, check=False).returncode == 0
    try:
        if mounted:
            with contextlib.suppress(OSError), open(mount / "filler", "wb") as handle:
                while True:
                    handle.write(b"\0" * 4096)
                    handle.flush()
            yield mount, "tmpfs of 64 KiB filled to the last block"
        else:
            yield mount, "simulated"
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=False)


def full_disk(work: Path) -> dict[str, Any]:
    """The runs directory on a full filesystem: one line, exit 1, no zero-byte temporary run record."""
    with _full_filesystem(work) as (mount, how):
        runs = mount / "runs"
        args = ["run", "ingest", "--runs-dir", str(runs), "--set", "source=builtin:digits"]
        if how == "simulated":  # ENOSPC from every run-record write, as a full disk gives it
            import errno

            from shardwalk.core.storage import files

            def full(path: Any, payload: Any) -> None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                raise OSError(errno.ENOSPC, "No space left on device", str(path))

            with mock.patch.object(files, "write_json_atomic", full), mock.patch("shardwalk.core.dag.runner.write_json_atomic", full):
                code, message, seconds = _in_process(args)
        else:
            code, message, seconds = _subprocess(args)
        leftovers = [p for p in runs.rglob("*") if p.is_file()] if runs.exists() else []
    ok = "No space left on device" in message and not leftovers
    return refusal_result("full_disk_run_record", code, 1, message, ok, seconds, f"{how}; files left: {len(leftovers)}")


def hardening_scenarios(work: Path, quick: bool) -> list[dict[str, Any]]:
    """Issue 17's scriptable faults. A lost shard during knn_graph (item 2) is issue 13's to add."""
    import ray

    from shardwalk.pipelines.runtime import connect

    out = [*wrong_address(work), full_disk(work)]  # fresh drivers: before this process starts Ray
    connect(num_cpus=2)
    try:
        out += walk_scenarios(work / "walk-hardening", quick)
        out.append(hostile_manifest(work))
    finally:
        ray.shutdown()
    return out


def safety_scenarios(work: Path, quick: bool, names: tuple[str, ...] = SAFETY_MODULES) -> list[dict[str, Any]]:
    """The named SAFETY_MODULES modules' scenarios, each in a folder of its own."""
    import importlib

    out: list[dict[str, Any]] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        (work / name).mkdir(parents=True, exist_ok=True)
        out += module.scenarios(work / name, quick)
    return out


# ----------------------------------------------------------------------------- report


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="bench_faults — each fault next to its fault-free run")
    for col in ("scenario", "finished", "identical", "time ratio", "note"):
        table.add_column(col)
    for s in result["scenarios"]:
        if s.get("refused"):  # the documented outcome is a refusal: show the exit code and the user's line
            verdict = "as documented" if s["as_documented"] else "NOT as documented"
            table.add_row(s["name"], f"refused, exit {s['exit_code']}", verdict, "-", Text(f"{s['message']} ({s['note']})"))
            continue
        table.add_row(s["name"], "yes" if s["finished"] else "NO", "yes" if s["identical"] else "NO",
                      f"{s['time_ratio']:.2f}" if s["time_ratio"] is not None else "-", Text(s["note"]))  # notes quote errors
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="smaller data and walks")
    parser.add_argument("--only", default="", help="comma-separated subset: driver,hnsw,cluster,hardening,safety, or safety modules by name")
    args = parser.parse_args(argv)
    groups = set(filter(None, args.only.split(","))) or {"driver", "hnsw", "cluster", "hardening", "safety"}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    load_before = os.getloadavg()  # figures taken under load mislead: the JSON says how busy the machine was
    scenarios: list[dict[str, Any]] = []
    try:
        if "driver" in groups:
            scenarios.append(driver_sigkill(work, args.quick))
        if "hnsw" in groups:
            import ray

            from shardwalk.pipelines.runtime import connect

            connect(num_cpus=2)
            try:
                scenarios += hnsw_scenarios(args.quick)
                scenarios.append(knn_graph_kill(args.quick))
            finally:
                ray.shutdown()
        if "hardening" in groups:
            scenarios += hardening_scenarios(work, args.quick)
        if "cluster" in groups:
            scenarios += cluster_scenarios(work, args.quick)
        if "safety" in groups or groups & set(SAFETY_MODULES):
            names = SAFETY_MODULES if "safety" in groups else tuple(n for n in SAFETY_MODULES if n in groups)
            scenarios += safety_scenarios(work, args.quick, names)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"quick": args.quick, "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "scenarios": scenarios}
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
