"""Measure the cost model's constants on this machine and write a sealed calibration file (a few minutes).

    python -m benchmarks.calibrate                              # writes core/calibration.json (what plan uses)
    python -m benchmarks.calibrate --out my-cluster.json        # then: shardwalk plan ... --calibration my-cluster.json
    python -m benchmarks.calibrate --quick --out /tmp/cal.json  # smaller sizes, ~1 min (a smoke test)

Run it on a node of the machine type your cluster uses, while nothing else runs on it (the load average is
recorded in the file's `machine`). What it measures, each on one core unless said otherwise:
hnswlib build and query seconds per row at two dimensions and two sizes (→ the dim and log-size terms),
the kNN graph without an index (partition and exact: per pair, per dimension),
hnswlib's speed-up with all cores, index bytes against shardwalk.core.plan.sizing's rule, kNN-graph bookkeeping per row,
Parquet read+validate+write and sha256 throughput, float32 matmul flops, the embedded Ray's start-up and
idle footprint, an actor's start-up and footprint (with and without torch), the first task of a stage,
the actor→actor hand-off latency, a hand-off message over a direct link, a whole run's time outside its stages, proxy training time per example-unit and torch's warm-up, an SRRW hop's
compute (two data sizes) and graph partitioning per edge.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shardwalk.core.plan.calibration import (
    DEFAULT_FILE,
    STANDARD_SHAPES,
    Calibration,
    Constants,
    NodeShape,
    save,
)

SHARD_ACTOR_MODULES = ("shardwalk.workers.hnsw_actor", "workers.hnsw_shard")  # the HnswShard module, after / before its split
MAX_LOG_GROWTH = 0.3  # per ln(size): 3× HNSW's ln(n) search depth; more is noise from a loaded machine
REPEATS = {False: 3, True: 1}  # hnswlib timings are medians of this many builds: one swung ±15 % between runs here
SIZES = {False: {"ref": 50_000, "small": 10_000, "queries": 2_000}, True: {"ref": 6_000, "small": 1_500, "queries": 500}}


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    from benchmarks.bench_scale import _centres, generate_rows

    return generate_rows(n, dim, seed, 1, _centres(n, dim, seed))


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - began, out


def _build(x: np.ndarray, threads: int) -> tuple[float, Any]:
    import hnswlib

    index = hnswlib.Index(space="l2", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=16, ef_construction=200, random_seed=100)
    seconds, _ = _timed(index.add_items, x, np.arange(len(x)), num_threads=threads)
    return seconds, index


def _query(index: Any, q: np.ndarray) -> float:
    index.set_ef(64)
    seconds, _ = _timed(index.knn_query, q, k=11, num_threads=1)
    return seconds / len(q)


def measure_hnsw(quick: bool) -> dict[str, float]:
    """Build / query seconds per row (1 thread) at dims 32 and 128 and two sizes; threads; bytes per row."""
    from shardwalk.core.plan.sizing import index_bytes

    n, small, nq = SIZES[quick]["ref"], SIZES[quick]["small"], SIZES[quick]["queries"]
    x = _vectors(n, 128)
    threads = os.cpu_count() or 1
    gc.collect()
    before = _rss()  # first, in a fresh heap: a later build would reuse the freed pages of an earlier one
    t_all, index = _build(x, threads)
    out = {"index_memory_ratio": max(_rss() - before, 1) / index_bytes(n, 128, 16)}
    del index
    reps = REPEATS[quick]
    t_all = statistics.median([t_all, *(_build(x, threads)[0] for _ in range(reps - 1))])
    per_row, per_query = {}, {}
    for rows, dim in ((n, 32), (n, 128), (small, 128)):
        x = _vectors(rows, dim)
        builds, queries = [], []
        for _ in range(reps):
            seconds, index = _build(x, 1)
            builds.append(seconds / rows)
            queries.append(_query(index, x[:nq]))
            del index
        per_row[rows, dim], per_query[rows, dim] = statistics.median(builds), statistics.median(queries)
    out["thread_efficiency"] = 1.0 if threads == 1 else min(
        1.0, max(0.05, (per_row[n, 128] * n / t_all - 1) / (threads - 1)))
    for name, table in (("build", per_row), ("query", per_query)):
        per_dim = max(0.0, (table[n, 128] - table[n, 32]) / 96)
        base = max(0.0, table[n, 32] - 32 * per_dim)
        growth = min(MAX_LOG_GROWTH, max(0.0, (table[n, 128] / table[small, 128] - 1) / np.log(n / small)))
        out |= {f"{name}_s_per_row": base, f"{name}_s_per_row_per_dim": per_dim, f"{name}_log_growth": float(growth)}
    return out


def measure_graph(quick: bool) -> dict[str, float]:
    """The kNN graph without an index, one core, per dimension: shardwalk.core.plan.sample_costs on 128-d data."""
    from shardwalk.core.index.graph_settings import GraphSettings
    from shardwalk.core.plan.sample_costs import measure_arrays

    dim = 128
    got = measure_arrays(_vectors(SIZES[quick]["ref"], dim), k=11, M=16, ef_construction=200, ef=64,
                         settings=GraphSettings())
    return {"local_s_per_pair_per_dim": got.local_s_per_pair / dim, "exact_s_per_pair_per_dim": got.exact_s_per_pair / dim,
            "assign_s_per_row_cell_per_dim": got.assign_s_per_row_cell / dim,
            "train_s_per_unit_per_dim": got.train_s_per_unit / dim, "rest_s_per_row_per_dim": got.rest_s_per_row / dim}


def measure_graph_threads(quick: bool) -> dict[str, float]:
    """Speed-up per extra thread of the partition graph's local graphs as an actor runs them
    (`local_candidates` with its threads, one cell per thread): they scale unlike hnswlib's inserts."""
    from shardwalk.core.index import knn_partition as kp

    threads = os.cpu_count() or 1
    n = SIZES[quick]["ref"] // 2
    x = _vectors(n, 128)
    settings = kp.GraphSettings(method="partition")
    parts = kp.partitions_for(n, settings)
    kp.warm_kernels(threads, "partition")
    member = kp.assign(kp.train_partitions(x[kp.training_rows(n, parts, 0)], parts, "l2", 0, settings.overlap), x, settings.overlap)
    ids = np.arange(n, dtype=np.int64)

    def local(t: int) -> float:
        return _timed(kp.local_candidates, ids, x, member, range(parts), 11, "l2", settings.block, None, t)[0]

    one, many = statistics.median(local(1) for _ in range(3)), statistics.median(local(threads) for _ in range(3))
    efficiency = 1.0 if threads == 1 else min(1.0, max(0.05, (one / many - 1) / (threads - 1)))
    return {"graph_thread_efficiency": efficiency}


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_io(quick: bool) -> dict[str, float]:
    """Parquet read + validate + write, sha256, kNN-graph bookkeeping per row, float32 matmul flops."""
    import pyarrow.parquet as pq

    from shardwalk.core.data.schema import KNN_GRAPH_SCHEMA, from_numpy, validate_vectors
    from shardwalk.core.index import hnsw
    from shardwalk.core.storage.files import write_parquet

    rows = 20_000 if quick else 100_000
    x = _vectors(rows, 128)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        path = write_parquet(from_numpy(x), Path(tmp) / "part.parquet")
        validate_vectors(pq.read_table(path), where="calibration")
        parquet = x.nbytes / (time.perf_counter() - began)
        blob = os.urandom(32 << 20)
        sha = len(blob) / _timed(hashlib.sha256, blob)[0]
        batch, k = 4096, 10
        ids = np.arange(batch, dtype=np.int64)
        parts = [(np.random.default_rng(s).integers(0, rows, (batch, k + 1)), np.sort(
            np.random.default_rng(s).random((batch, k + 1), dtype=np.float32), 1)) for s in range(2)]
        began = time.perf_counter()
        merged = hnsw.merge_results(parts, k + 1)
        nbrs, dists = hnsw.drop_self(ids, *merged, k)
        _write_graph(Path(tmp) / "graph.parquet", ids, nbrs, dists, KNN_GRAPH_SCHEMA)
        graph = (time.perf_counter() - began) / batch
    a, b = np.ones((1000, 128), np.float32), np.ones((128, 20_000), np.float32)
    a @ b
    flops = 2 * 1000 * 128 * 20_000 / _timed(np.matmul, a, b)[0] / (os.cpu_count() or 1)
    return {"parquet_bytes_per_s": parquet, "sha256_bytes_per_s": sha, "graph_s_per_row": graph,
            "blas_flops_per_s": flops}


def _write_graph(path: Path, ids: np.ndarray, nbrs: np.ndarray, dists: np.ndarray, schema: Any) -> None:
    import pyarrow as pa

    from shardwalk.core.storage.files import write_parquet

    offsets = pa.array(np.arange(0, nbrs.size + 1, nbrs.shape[1], dtype=np.int32))
    write_parquet(pa.table([pa.array(ids), pa.ListArray.from_arrays(offsets, pa.array(nbrs.reshape(-1))),
                            pa.ListArray.from_arrays(offsets, pa.array(dists.reshape(-1), pa.float32()))],
                           schema=schema), path)


def measure_training(quick: bool) -> dict[str, float]:
    """Proxy training seconds per (example × epoch × (dim·hidden + hidden·classes)) on one thread; warm-up."""
    import torch

    from shardwalk.core.coresets.proxy import ProxySpec, score_shard

    torch.set_num_threads(1)
    rows, dim, hidden, classes, epochs = (2000 if quick else 8000), 64, 128, 10, 2
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(rows, dim)).astype(np.float32), rng.integers(0, classes, rows)
    ids = np.arange(rows, dtype=np.int64)

    def once() -> float:
        spec = ProxySpec(models=1, epochs=epochs, hidden=hidden, batch_size=128)
        return _timed(score_shard, x, y, ids, classes, spec, total_rows=rows)[0]

    first, second = once(), once()
    unit = dim * hidden + hidden * classes
    return {"train_s_per_unit": second / (rows * epochs * unit), "torch_start_s": max(0.0, first - second)}


def measure_walk(quick: bool) -> dict[str, float]:
    """An SRRW hop's compute at two data sizes per agent (→ fixed and per-feature terms); KL partitioning."""
    from shardwalk.core.srrw import SRRW, run_sa_srrw, walk_partition
    from shardwalk.core.srrw.agents import spread, standard_graph
    from shardwalk.core.srrw.objectives import build_objective

    graph = standard_graph("barabasi_albert", n=300, m=3, seed=0)
    steps = 4000 if quick else 20_000
    per_hop = {}
    for rows, dim in ((2, 8), (16, 64)):
        rng = np.random.default_rng(0)
        blocks = {n: (rng.normal(size=(rows, dim)), rng.integers(0, 2, rows).astype(float)) for n in graph.nodes}
        objective = build_objective("logistic", blocks, lam=0.1)
        run_sa_srrw(objective, graph, steps=2, alpha=10.0, lr=5.0)  # compiles (or loads) the kernel untimed
        result = run_sa_srrw(objective, graph, steps=steps, alpha=10.0, lr=5.0)
        per_hop[rows * (dim + 1)] = result.stats["walk_seconds"] / steps
    (f1, t1), (f2, t2) = sorted(per_hop.items())
    slope = max(0.0, (t2 - t1) / (f2 - f1))
    generated, big = _timed(standard_graph, "barabasi_albert", n=5000 if quick else 20_000, m=4, seed=0)
    placed, _ = _timed(spread, np.arange(5 * big.number_of_nodes()), None, sorted(big.nodes), mode="iid")
    graph_s = (generated + placed) / big.number_of_edges()
    big = standard_graph("barabasi_albert", n=1000 if quick else 2000, m=4, seed=0)
    seconds, _ = _timed(walk_partition, SRRW(big, 10.0), big, 2)
    return {"hop_s": max(0.0, t1 - slope * f1), "hop_s_per_feature": slope,
            "partition_s_per_edge": seconds / big.number_of_edges(), "graph_s_per_edge": graph_s}


def measure_links(quick: bool) -> dict[str, float]:
    """A hand-off message over a direct link (workers/peer_link.py, the walk's format: core/srrw/wire.py): CPU
    seconds of both ends — encode, send, receive, decode — in this one process, for messages of 1 and of 64
    tokens shaped like the sized walk's (θ of 40, 792 shared entries of which ~90 changed), so the fixed cost
    per message is the intercept; the per-token part belongs to a crossing (`link_crossing_s`, the sized
    walk's: docs/throughput.md)."""
    import threading

    from shardwalk.core.srrw.token import RNG_WORDS, TokenBatch
    from shardwalk.core.srrw.wire import Expect, decode, encode
    from shardwalk.workers.peer_link import LinkEnd

    dim, width, messages = 40, 792, 200 if quick else 1000
    expect = Expect(dim, width, True, 256, 2000, 2)

    def batch(rows: int) -> TokenBatch:
        rng = np.random.default_rng(rows)
        logy = np.where(rng.random((rows, width)) < 90 / width, rng.random((rows, width)), np.nan)
        ints = rng.integers(0, 256, (5, rows))
        return TokenBatch(np.arange(rows), *ints[1:4], np.ones(rows, bool), ints[4], rng.random(rows),
                          rng.random((rows, dim)), None, logy, rng.integers(0, 2**63, (rows, RNG_WORDS), dtype=np.uint64), True)

    def per_message(rows: int) -> float:
        done, failed, got = threading.Event(), [], [0]

        def deliver(message: bytes) -> None:
            decode(message, expect)
            got[0] += 1
            if got[0] == messages:
                done.set()

        key = os.urandom(32)
        receiver = LinkEnd(key, deliver, failed, expected=1, host="127.0.0.1")
        sender = LinkEnd(key, lambda message: None, failed, expected=0, host="127.0.0.1")
        sender.open(0, receiver.address)
        one = batch(rows)
        cpu = time.process_time()
        for _ in range(messages):
            sender.send(0, encode(one, 1, rows))
        if not done.wait(120) or failed:
            raise RuntimeError(f"link messages not delivered: {failed}")
        return (time.process_time() - cpu) / messages

    per_message(1)  # warm: imports, first connections
    small, large = (statistics.median(per_message(rows) for _ in range(3)) for rows in (1, 64))
    per_token = max(0.0, (large - small) / 63)
    print(f"  link message: {1e6 * small:.0f} µs of 1 token, {1e6 * large:.0f} µs of 64", file=sys.stderr)
    return {"link_message_s": max(0.0, small - per_token)}


def _tree_pss(root: int, skip_workers: bool) -> tuple[int, int]:
    """(PSS of the tree, PSS of its raylet and agents); Ray's idle workers are left out when `skip_workers`."""
    from benchmarks.memory import descendants, pss_bytes

    total = node = 0
    for pid in descendants(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if skip_workers and "default_worker.py" in cmd:
            continue
        total += pss_bytes(pid)
        node += pss_bytes(pid) if ("raylet" in cmd or "agent" in cmd) else 0
    return total, node


IDLE_DRIVER = ("import sys; import shardwalk.pipelines.cli; from shardwalk.pipelines.runtime import connect; connect(); "
               "print('ready', flush=True); sys.stdin.readline()")  # ends (and stops its Ray) when stdin closes


def _graph_actor_start() -> float:
    """Seconds until a kNN-graph actor (workers/knn_partition.py's GraphActor: numba and the graph kernels,
    loaded from numba's cache) answers, its kernels loaded: what the partition graph pays before its k-means."""
    import ray

    from shardwalk.core.index.knn_partition import warm_kernels
    from shardwalk.workers.knn_partition import GraphActor

    warm_kernels(2, "partition")  # numba's on-disk cache filled, as after any earlier run
    began = time.perf_counter()
    actor = GraphActor.options(num_cpus=0).remote(0, os.cpu_count() or 1, "partition")
    ray.get(actor.read.remote([], 0.0, 0))
    ray.get(actor.seed.remote([], 1, "l2", 0))  # joins the kernel-loading thread
    seconds = time.perf_counter() - began
    ray.kill(actor)
    return seconds


def _idle_driver_pss() -> tuple[int, int]:
    """(PSS of a CLI-like driver with its embedded Ray, idle workers left out; PSS of the raylet and agents).

    Measured in a fresh process: this one has imported torch and held every earlier measurement's arrays,
    which a `shardwalk run` driver never has."""
    import subprocess

    with subprocess.Popen([sys.executable, "-c", IDLE_DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the idle driver did not start Ray")
            time.sleep(2.0)  # let the prestarted workers settle before the idle footprint is read
            return _tree_pss(proc.pid, skip_workers=True)
        finally:
            proc.stdin.close()
            proc.wait(timeout=120)


def _walk_start() -> float:
    """A 10-step walk on fresh walker actors: what a walk stage pays before its hops (actors, imports, kernel)."""
    from shardwalk.core.srrw.agents import standard_graph
    from shardwalk.core.srrw.objectives import build_objective
    from shardwalk.workers.walker import run_distributed_sa_srrw

    graph = standard_graph("karate")
    rng = np.random.default_rng(0)
    blocks = {n: (rng.normal(size=(4, 8)), rng.integers(0, 2, 4).astype(float)) for n in graph.nodes}
    objective = build_objective("logistic", blocks, lam=0.1)
    return _timed(run_distributed_sa_srrw, objective, graph, steps=10, tokens=4, partitions=1)[0]


def measure_ray() -> dict[str, float]:
    """Embedded Ray's start-up and idle footprint, actor start-up and footprint, a stage's first task, hand-off."""
    import ray

    from benchmarks.bench_srrw import _ping_ms
    from benchmarks.memory import pss_bytes
    from shardwalk.pipelines.runtime import connect

    head, node = _idle_driver_pss()
    started, resources = _timed(connect)

    @ray.remote(num_cpus=0)
    class Probe:
        def __init__(self, torch_too: bool) -> None:
            import importlib

            import hnswlib  # noqa: F401

            for module in SHARD_ACTOR_MODULES:  # what a shard actor's process imports
                try:
                    importlib.import_module(module)
                    break
                except ModuleNotFoundError:
                    continue
            if torch_too:
                import shardwalk.core.coresets.proxy  # noqa: F401

        def pid(self) -> int:
            return os.getpid()

    began = time.perf_counter()
    plain = Probe.remote(False)
    pid = ray.get(plain.pid.remote())
    actor_start = time.perf_counter() - began
    graph_actor_start = _graph_actor_start()
    began = time.perf_counter()
    with_torch = Probe.remote(True)
    torch_pid = ray.get(with_torch.pid.remote())
    torch_actor_start = time.perf_counter() - began
    time.sleep(1.0)
    worker, torch_worker = pss_bytes(pid), pss_bytes(torch_pid)

    @ray.remote(num_cpus=0)
    def stage_imports() -> float:
        import shardwalk.pipelines.index  # noqa: F401

        return 0.0

    stage_start, _ = _timed(lambda: ray.get(stage_imports.remote()))

    @ray.remote(num_cpus=0)
    def figures() -> None:  # a report stage: its modules (matplotlib), four PNG figures
        import io

        import matplotlib.pyplot as plt

        import shardwalk.pipelines.reports.stage  # noqa: F401
        for _ in range(4):
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(np.random.default_rng(0).random(2000))
            fig.savefig(io.BytesIO(), format="png", dpi=100)
            plt.close(fig)

    report, _ = _timed(lambda: ray.get(figures.remote()))
    stage_overhead = min(_timed(lambda: ray.get(stage_imports.remote()))[0] for _ in range(5))
    handoff = _ping_ms() / 1000
    walk_start = statistics.median(_walk_start() for _ in range(3))
    for actor in (plain, with_torch):
        ray.kill(actor)
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    out = {"ray_start_s": started, "actor_start_s": actor_start, "graph_actor_start_s": graph_actor_start, "torch_actor_start_s": torch_actor_start, "stage_start_s": stage_start, "stage_overhead_s": stage_overhead, "report_s": report,
           "worker_bytes": worker, "torch_worker_bytes": torch_worker, "ray_head_bytes": head,
           "ray_node_bytes": node, "ray_memory_fraction": resources.get("memory", 0) / physical,
           "handoff_s": handoff, "walk_start_s": walk_start, "allreduce_s": 2 * handoff}  # all-reduce: not measured, two hand-offs' worth
    ray.shutdown()
    return out


def _outside_stages(env: dict[str, str]) -> float:
    """One tiny `shardwalk run srrw` in a fresh process: its wall seconds less its stages' own seconds."""
    import subprocess

    from shardwalk.core.dag.runner import list_runs

    with tempfile.TemporaryDirectory(prefix="calibrate-driver-") as runs:
        sets = {"graph.name": '"karate"', "source": '"builtin:breast_cancer"', "steps": 200, "tokens": 1, "partitions": 1}
        cmd = [sys.executable, "-m", "shardwalk.pipelines.cli", "run", "srrw", "--runs-dir", runs]
        for key, value in sets.items():
            cmd += ["--set", f"{key}={value}"]
        began = time.perf_counter()
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[2:5])}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        record = list_runs(runs)[0]
    return wall - sum(stage.get("seconds") or 0.0 for stage in record["stages"].values())


def measure_driver(cal: Calibration) -> dict[str, float]:
    """A run's life outside its stages (interpreter, CLI imports, embedded Ray start and stop, run records):
    what every `shardwalk run` pays once, measured as bench_plan sees it. The runs check their fit with
    `cal` (the constants measured so far), not with a calibration file this one is about to replace."""
    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        save(cal, Path(tmp) / "partial.json")
        env = {**os.environ, "SHARDWALK_CALIBRATION": str(Path(tmp) / "partial.json")}
        return {"driver_s": statistics.median(_outside_stages(env) for _ in range(3))}


def machine(quick: bool, provisional: bool, load_before: tuple[float, ...]) -> dict[str, Any]:
    """Where the constants come from: host, CPU model, cores, memory, load, date; provisional or not."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    cpus = os.cpu_count() or 1
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    name = f"{socket.gethostname()}: {cpus} × {cpu}, {memory / 2**30:.0f} GiB"
    if provisional:
        name = f"PROVISIONAL (measured on a loaded shared machine, to be replaced) — {name}"
    return {"name": name, "hostname": socket.gethostname(), "cpu_model": cpu, "cpus": cpus, "memory_bytes": memory,
            "python": sys.version.split()[0], "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "quick": quick, "provisional": provisional, "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg())}


def calibrate(quick: bool, provisional: bool = False) -> Calibration:
    """Every measurement, in the order that keeps Ray's processes out of the single-core timings."""
    load_before = os.getloadavg()
    values: dict[str, float] = {}
    for step in (measure_hnsw, measure_graph, measure_graph_threads, measure_io, measure_training, measure_walk,
                 measure_links):
        began = time.perf_counter()
        values |= step(quick)
        print(f"  {step.__name__}: {time.perf_counter() - began:.1f} s", file=sys.stderr)
    values |= measure_ray()
    values |= {"ref_rows": SIZES[quick]["ref"]}
    for key in ("worker_bytes", "torch_worker_bytes", "ray_head_bytes", "ray_node_bytes"):
        values[key] = int(values[key])
    about = machine(quick, provisional, load_before)
    here = NodeShape("this-machine", about["cpus"], about["memory_bytes"])
    shapes = {"this-machine": here, **{n: NodeShape(n, c, m) for n, (c, m) in STANDARD_SHAPES.items()}}
    partial = Calibration(Constants(**values, driver_s=0.0), about, shapes, "this-machine")
    values |= measure_driver(partial)  # after measure_ray's shutdown: each run starts its own Ray
    about["load_average_after"] = list(os.getloadavg())
    return Calibration(Constants(**values), about, shapes, "this-machine")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_FILE), help=f"calibration file to write (default {DEFAULT_FILE})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (~1 min); for smoke tests")
    parser.add_argument("--provisional", action="store_true",
                        help="mark the file provisional in its `machine` (measured on a loaded machine)")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    began = time.perf_counter()
    cal = calibrate(args.quick, args.provisional)
    save(cal, args.out)
    c = cal.constants
    print(f"wrote {args.out} in {time.perf_counter() - began:.0f} s: build {1e6 * (c.build_s_per_row + 128 * c.build_s_per_row_per_dim):.0f} "
          f"µs/row at d=128, query {1e6 * (c.query_s_per_row + 128 * c.query_s_per_row_per_dim):.0f} µs, "
          f"actor start {c.actor_start_s:.2f} s, hand-off {1e3 * c.handoff_s:.2f} ms, "
          f"hop {1e6 * c.hop_s:.1f} µs, worker {c.worker_bytes / 2**20:.0f} MiB; load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
