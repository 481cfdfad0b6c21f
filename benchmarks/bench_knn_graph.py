"""The all-points kNN graph: shardwalk's defaults beside hnswlib and pynndescent, same threads, one run.

    python -m benchmarks.bench_knn_graph --quick --json benchmarks/results/knn_graph_100k.json   # 100,000 × 128
    python -m benchmarks.bench_knn_graph --json benchmarks/results/knn_graph_1m.json            # 1,000,000 × 128
    python -m benchmarks.bench_knn_graph --n 20000 --no-levers --json /tmp/g.json               # a smoke test
    python -m benchmarks.bench_knn_graph --only-shardwalk --no-levers --json /tmp/g.json         # no anchors: iterate

Data: the bench_scale generator (clustered 128-d, parts of 100,000 rows). Each side runs in its own process
tree whose PSS is sampled (benchmarks/memory.py), with THREADS = 2 threads:
- hnswlib: build (M16, efC200) + batched query-all (ef 64, k = 11, self dropped); then knn_query QPS on
  1,000- and 10,000-query batches at ef 40 and 160;
- pynndescent: NNDescent(n_neighbors = 31), the first 10 non-self neighbours kept, its JIT warmed on 2,000 rows
  outside the timing;
- shardwalk: `shardwalk run index --set hnsw=false` (defaults otherwise: knn_graph.method = auto): its
  `knn_graph` stage's seconds (the graph from the ingested parts); the run's PSS less Ray's idle footprint;
  then the graph builder on the same ingested parts with 1 and 2 single-threaded actors (strong scaling), the
  levers one at a time (partition rows, overlap, refinement rounds, block), and `ShardedIndex.search` QPS
  (an index built with defaults) on the same batches as hnswlib.
Recall@10 of every graph on 1,000 points against exact search. The load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.bench_scale import exact_knn, generate, load_vectors, ray_idle, recall, run_sampled

THREADS = 2
K, GRAPH_K = 10, 11
SEARCH_EFS = (40, 160)
SEARCH_BATCHES = (1_000, 10_000)
NICENESS = "RAY_worker_niceness"  # Ray's setting (its default 15, which shardwalk keeps)
SEARCH_CALL_ROWS = 41_000  # queries per side and setting, as interleaved calls of one batch (at least 11; the median is kept)
LEVERS = [  # (name, settings changed from the defaults)
    ("partition_rows=1024", {"partition_rows": 1024}), ("partition_rows=4096", {"partition_rows": 4096}),
    ("overlap=1", {"overlap": 1}), ("overlap=3", {"overlap": 3}),
    ("partition_rows=2048", {"partition_rows": 2048}), ("partition_rows=768", {"partition_rows": 768}),
    ("refine_rounds=0", {"refine_rounds": 0}), ("refine_rounds=2", {"refine_rounds": 2}),
    ("refine_min_rate=0", {"refine_min_rate": 0.0}),  # every round runs, whatever its probe's update rate
    ("block=256", {"block": 256}), ("block=1024", {"block": 1024}),
]


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.bench_knn_graph", *args]


def _all(work: Path) -> tuple[np.ndarray, np.ndarray]:
    parts = [load_vectors(p) for p in sorted((work / "base").glob("*.parquet"))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _graph_recall(work: Path, rows: np.ndarray) -> float:
    """Recall@10 of graph rows (ordered like the sample) against the exact graph of the sample."""
    return recall(rows, np.load(work / "graph_truth.npy"))


# ----------------------------------------------------------------------------- jobs (own processes)


def hnswlib_job(spec: dict[str, Any]) -> dict[str, Any]:
    import hnswlib

    work = Path(spec["work"])
    ids, x = _all(work)
    started = time.perf_counter()
    index = hnswlib.Index(space="l2", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=16, ef_construction=200, random_seed=100)
    index.add_items(x, ids, num_threads=THREADS)
    build = time.perf_counter() - started
    index.set_ef(64)
    started = time.perf_counter()
    rows = np.empty((len(x), GRAPH_K - 1), np.int64)
    for start in range(0, len(x), 100_000):
        labels, _ = index.knn_query(x[start:start + 100_000], k=GRAPH_K, num_threads=THREADS)
        keep = labels != ids[start:start + 100_000, None]
        keep[keep.all(1), -1] = False
        rows[start:start + len(labels)] = labels[keep].reshape(len(labels), GRAPH_K - 1)
    graph = time.perf_counter() - started
    sample = np.load(work / "graph_sample.npy")
    _, q = load_vectors(work / "queries.parquet")
    qps = {}
    for ef in SEARCH_EFS:
        index.set_ef(ef)
        for batch in SEARCH_BATCHES:
            started = time.perf_counter()
            index.knn_query(q[:batch], k=K, num_threads=THREADS)
            qps[f"batch{batch}_ef{ef}"] = batch / (time.perf_counter() - started)
    return {"build_seconds": build, "query_all_seconds": graph, "graph_seconds": build + graph,
            "graph_recall_at_10": _graph_recall(work, rows[sample]), "search_qps": qps}


def pynndescent_job(spec: dict[str, Any]) -> dict[str, Any]:
    from pynndescent import NNDescent

    work = Path(spec["work"])
    ids, x = _all(work)
    _ = NNDescent(x[:2000], n_neighbors=31, n_jobs=THREADS).neighbor_graph  # JIT warm-up, outside the timing
    started = time.perf_counter()
    nnd = NNDescent(x, n_neighbors=31, n_jobs=THREADS)  # no random_state: a fixed one turns parallelism off
    labels, _ = nnd.neighbor_graph
    seconds = time.perf_counter() - started
    sample = np.load(work / "graph_sample.npy")
    got = labels[sample]
    rows = np.array([[ids[j] for j in row if j != s][:K] for s, row in zip(sample.tolist(), got.tolist())])
    return {"graph_seconds": seconds, "graph_recall_at_10": _graph_recall(work, rows)}


def shardwalk_job(spec: dict[str, Any]) -> dict[str, Any]:
    """In-process builder runs on the ingested parts: strong scaling, levers (each timed alone)."""
    from shardwalk.core.index.graph_settings import GraphSettings
    from shardwalk.pipelines.runtime import connect
    from shardwalk.workers.knn_partition import build_graph

    connect(num_cpus=THREADS)
    work, ingest = Path(spec["work"]), spec["ingest"]
    sample = np.load(work / "graph_sample.npy")

    def one(name: str, settings: GraphSettings, **kw: Any) -> dict[str, Any]:
        out = work / f"graph-{name}"
        started = time.perf_counter()
        summary = build_graph(ingest, str(out), k=K, settings=settings, **kw)
        seconds = time.perf_counter() - started
        graph = pq.read_table(out).sort_by("id")
        rows = np.array(graph.column("neighbors").take(pa.array(sample)).to_pylist())
        return {"seconds": seconds, "graph_recall_at_10": _graph_recall(work, rows),
                **{k: summary[k] for k in ("partitions", "actors", "threads_per_actor", "refine_rates", "read_seconds",
                                           "train_seconds", "scatter_seconds", "local_seconds", "finish_seconds")}}

    base = GraphSettings()
    result: dict[str, Any] = {"scaling": {"1_actor": one("a1", base, actors=1, threads=1),
                                          "2_actors": one("a2", base, actors=2, threads=1)}}
    if spec["levers"]:
        result["levers"] = {"defaults": one("defaults", base, actors=1, threads=THREADS)}
        for name, change in LEVERS:
            result["levers"][name] = one(name.replace("=", "-"), GraphSettings(**{**base.as_params(), **change}),
                                         actors=1, threads=THREADS)
    return result


def search_job(spec: dict[str, Any]) -> dict[str, Any]:
    """`ShardedIndex.search` (an index built with defaults, not timed) beside hnswlib's `knn_query` on the same
    graph (its saved shard loaded in this process, THREADS threads), calls interleaved (41 of 1,000 rows, 11 of 10,000) so
    both sides see the same machine; the median call of each side. Lever: the old fixed 4,096-row batches."""
    import hnswlib

    from shardwalk.pipelines.runtime import connect
    from shardwalk.workers.sharded_index import ShardedIndex

    connect(num_cpus=THREADS)
    work = Path(spec["work"])
    _, q = load_vectors(work / "queries.parquet")
    truth = np.load(work / "search_truth.npy")
    calls: dict[str, dict[str, list[float]]] = {}
    recall_at_10: dict[str, float] = {}

    def timed(key: str, side: str, fn: Any) -> Any:
        started = time.perf_counter()
        out = fn()
        calls.setdefault(key, {}).setdefault(side, []).append(time.perf_counter() - started)
        return out

    with ShardedIndex.build(str(work / "base")) as index:
        saved = index.save(work / "search-index")
        ref = hnswlib.Index(space="l2", dim=q.shape[1])
        ref.load_index(str(Path(saved) / "shard-00000.bin"))  # defaults at this size: one shard
        ref.set_num_threads(THREADS)
        index.search(q[:100], k=K, ef=64)  # warm-up
        for ef in SEARCH_EFS:
            ref.set_ef(ef)
            for batch in SEARCH_BATCHES:
                key = f"batch{batch}_ef{ef}"
                qq = q[:batch]
                sides = [("hnswlib", partial(ref.knn_query, qq, k=K, num_threads=THREADS)),
                         ("shardwalk", partial(index.search, qq, k=K, ef=ef)),
                         ("shardwalk_batch4096", partial(index.search, qq, k=K, ef=ef, batch_size=4096))]
                for rep in range(max(11, SEARCH_CALL_ROWS // batch)):
                    for side, fn in sides[::-1] if rep % 2 else sides:
                        got = timed(key, side, fn)
                        if rep == 0 and batch == SEARCH_BATCHES[0] and side != "shardwalk_batch4096":
                            recall_at_10[f"{side}_ef{ef}"] = recall(np.asarray(got[0], np.int64)[:len(truth)], truth)
    median = {key: {side: float(np.median(ts)) for side, ts in sides.items()} for key, sides in calls.items()}
    return {"calls_seconds": calls, "median_seconds": median, "recall_at_10": recall_at_10,
            "threads": index.threads, "worker_niceness": os.environ.get(NICENESS, "15 (Ray's default, as shipped)")}


JOBS = {"hnswlib": hnswlib_job, "pynndescent": pynndescent_job, "shardwalk": shardwalk_job, "search": search_job}


# ----------------------------------------------------------------------------- the run


def prepare(work: Path, n: int, dim: int, queries: int, graph_sample: int) -> None:
    generate(work, n, dim, queries)
    sample = np.sort(np.random.default_rng(1).choice(n, size=min(graph_sample, n), replace=False))
    np.save(work / "graph_sample.npy", sample)
    _, x = _all(work)
    truth = exact_knn(work / "base", x[sample], GRAPH_K)
    keep = truth != sample[:, None]
    keep[keep.all(1), -1] = False
    np.save(work / "graph_truth.npy", truth[keep].reshape(len(sample), GRAPH_K - 1))
    _, q = load_vectors(work / "queries.parquet")
    np.save(work / "search_truth.npy", exact_knn(work / "base", q[:SEARCH_BATCHES[0]], K))


def shardwalk_run(work: Path) -> dict[str, Any]:
    """`shardwalk run index --set hnsw=false` with defaults: the graph stage's seconds, the run's PSS."""
    runs = work / "runs"
    cmd = [sys.executable, "-m", "shardwalk.pipelines.cli", "run", "index", "--runs-dir", str(runs),
           "--set", f"source={work / 'base'}", "--set", "hnsw=false", "--set", f"k={K}", "--set", "recall_sample=1000"]
    run = run_sampled(cmd)
    record = json.loads(next((runs / "runs").glob("*/run.json")).read_text())
    stages = record["stages"]
    graph = pq.read_table(stages["knn_graph"]["output"]).sort_by("id")
    sample = np.load(work / "graph_sample.npy")
    rows = np.array(graph.column("neighbors").take(pa.array(sample)).to_pylist())
    return {"graph_seconds": stages["knn_graph"]["seconds"], "graph_metrics": stages["knn_graph"]["metrics"],
            "ingest_seconds": stages["ingest"]["seconds"], "ingest_dir": stages["ingest"]["output"],
            "peak_pss_bytes": run["peak_pss_bytes"], "wall_seconds": run["seconds"],
            "graph_recall_at_10": _graph_recall(work, rows)}


def summarise(hn: dict[str, Any], nnd: dict[str, Any], sw: dict[str, Any], idle: int, extra: dict[str, Any],
              search: dict[str, Any] | None) -> dict[str, Any]:
    scaling = extra["scaling"]
    out = {
        "graph_recall_at_10": sw["graph_recall_at_10"],
        "graph_recall_at_10_hnswlib": hn["graph_recall_at_10"],
        "graph_recall_at_10_pynndescent": nnd["graph_recall_at_10"],
        "graph_seconds": {"shardwalk": sw["graph_seconds"], "pynndescent": nnd["graph_seconds"], "hnswlib": hn["graph_seconds"]},
        "graph_seconds_ratio_vs_pynndescent": nnd["graph_seconds"] / sw["graph_seconds"],
        "graph_seconds_ratio_vs_hnswlib": hn["graph_seconds"] / sw["graph_seconds"],
        "peak_pss_bytes": {"shardwalk": sw["peak_pss_bytes"], "pynndescent": nnd["peak_pss_bytes"],
                           "hnswlib": hn["peak_pss_bytes"]},
        "ray_idle_pss_bytes": idle,
        "peak_memory_ratio_vs_pynndescent": (sw["peak_pss_bytes"] - idle) / nnd["peak_pss_bytes"],
        "strong_scaling_2_vs_1_actor": scaling["1_actor"]["seconds"] / scaling["2_actors"]["seconds"],
    }
    out.update(search_summary(search))
    return out


def search_summary(search: dict[str, Any] | None) -> dict[str, Any]:
    """QPS ratios from the interleaved medians: hnswlib seconds / shardwalk seconds, per batch and ef."""
    if search is None:
        return {}
    med = search["median_seconds"]
    out = {"search_qps_ratio_vs_hnswlib": {key: m["hnswlib"] / m["shardwalk"] for key, m in med.items()},
           "search_recall_at_10": search["recall_at_10"]}
    out["search_levers"] = {"batch_size=4096 (before)": {key: m["hnswlib"] / m["shardwalk_batch4096"] for key, m in med.items()}}
    if "nice0" in search:
        out["search_levers"]["worker_niceness=0 (RAY_worker_niceness=0 exported)"] = {
            key: m["hnswlib"] / m["shardwalk"] for key, m in search["nice0"]["median_seconds"].items()}
    return out


def _job(name: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    run = run_sampled(_py("--job", name, json.dumps(spec)), env=None if env is None else {**os.environ, **env})
    return {**json.loads(run["stdout"].strip().splitlines()[-1]), "peak_pss_bytes": run["peak_pss_bytes"],
            "wall_seconds": run["seconds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_knn_graph", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="rows (default 1,000,000; --quick 100,000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--graph-sample", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--no-levers", action="store_true", help="skip the one-lever-at-a-time runs")
    parser.add_argument("--no-search", action="store_true", help="skip the ShardedIndex.search QPS side")
    parser.add_argument("--search-only", action="store_true", help="only the ShardedIndex.search QPS side")
    parser.add_argument("--only-shardwalk", action="store_true",
                        help="only shardwalk's graph runs (defaults, strong scaling, levers): no anchors, no search")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", metavar="OUT.json")
    parser.add_argument("--job", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(JOBS[args.job[0]](json.loads(args.job[1]))))
        return 0
    if not args.json:
        parser.error("--json OUT.json is required")
    n = args.n or (100_000 if args.quick else 1_000_000)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-knn-graph-", dir=args.workdir) as tmp:
        work = Path(tmp)
        print(f"generating {n} x {args.dim} + exact graph of {args.graph_sample} points ...", file=sys.stderr)
        prepare(work, n, args.dim, max(SEARCH_BATCHES), args.graph_sample)
        spec = {"work": str(work)}
        if args.search_only:
            search = _searches(spec)
            result = {"n": n, "dim": args.dim, "threads": THREADS, "quick": args.quick, "k": K,
                      "load_average_before": load_before, "load_average_after": os.getloadavg(), "search": search,
                      **search_summary(search)}
            return _write(args.json, result)
        if args.only_shardwalk:
            sw = shardwalk_run(work)
            extra = _job("shardwalk", {**spec, "ingest": sw["ingest_dir"], "levers": not args.no_levers})
            scaling = extra["scaling"]
            result = {"n": n, "dim": args.dim, "threads": THREADS, "quick": args.quick, "k": K,
                      "load_average_before": load_before, "load_average_after": os.getloadavg(),
                      "shardwalk": {**sw, **extra}, "graph_recall_at_10": sw["graph_recall_at_10"],
                      "graph_seconds": {"shardwalk": sw["graph_seconds"]},
                      "strong_scaling_2_vs_1_actor": scaling["1_actor"]["seconds"] / scaling["2_actors"]["seconds"]}
            return _write(args.json, result)
        print("hnswlib ...", file=sys.stderr)
        hn = _job("hnswlib", spec)
        print("pynndescent ...", file=sys.stderr)
        nnd = _job("pynndescent", spec)
        print("Ray idle footprint ...", file=sys.stderr)
        idle = ray_idle()
        print("shardwalk run index --set hnsw=false ...", file=sys.stderr)
        sw = shardwalk_run(work)
        print("shardwalk scaling and levers ...", file=sys.stderr)
        extra = _job("shardwalk", {**spec, "ingest": sw["ingest_dir"], "levers": not args.no_levers})
        search = None if args.no_search else _searches(spec)
    result = {"n": n, "dim": args.dim, "threads": THREADS, "quick": args.quick, "k": K,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "hnswlib": hn, "pynndescent": nnd, "shardwalk": {**sw, **extra}, "search": search}
    result.update(summarise(hn, nnd, sw, idle, extra, search))
    return _write(args.json, result)


def _searches(spec: dict[str, Any]) -> dict[str, Any]:
    """The search side as shipped (shard actors at Ray's worker niceness 15), then at niceness 0 as a lever."""
    print("ShardedIndex.search ...", file=sys.stderr)
    search = _job("search", spec)
    print("ShardedIndex.search, shard actors at niceness 0 ...", file=sys.stderr)
    return {**search, "nice0": _job("search", spec, {NICENESS: "0"})}


def _write(path: str, result: dict[str, Any]) -> int:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))
    for key in ("graph_recall_at_10", "graph_recall_at_10_hnswlib", "graph_recall_at_10_pynndescent", "graph_seconds",
                "graph_seconds_ratio_vs_pynndescent", "graph_seconds_ratio_vs_hnswlib", "peak_memory_ratio_vs_pynndescent",
                "strong_scaling_2_vs_1_actor", "search_qps_ratio_vs_hnswlib", "search_recall_at_10", "search_levers"):
        if key in result:
            print(f"{key:40s} {result[key]}")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
