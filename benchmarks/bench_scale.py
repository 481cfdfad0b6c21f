"""A million vectors end to end: `shardwalk run index` with its defaults beside hnswlib in one process.

    python -m benchmarks.bench_scale --json benchmarks/results/scale_1m.json            # 1,000,000 × 128
    python -m benchmarks.bench_scale --quick --json /tmp/scale_100k.json                # 100,000 (CI)
    python -m benchmarks.bench_scale --n 20000 --stream-repeats 1 --json /tmp/s.json    # a smoke test

Data (`generate`): a clustered 128-d float32 source, not uniform noise: C = n / 1000 Gaussian clusters
(centres N(0, 1), each cluster with its own per-axis scales in [0.05, 0.5]) — what embedding tables look
like to an index (dense clusters, uneven spread). Written as Parquet parts of 100,000 rows; 1,000 held-out
queries come from the same clusters (never in the base) with exact ground truth by brute force.

Side by side, in one run, each in its own process tree whose PSS (driver, raylet, GCS, every worker) is
sampled every second (benchmarks/memory.py):
- hnswlib: build M16/efC200, then the batched all-points knn_query k = 11 at ef 64, then a recall/QPS sweep
  on the held-out queries, with T threads (T = CPUs);
- shardwalk: `shardwalk run index --set source=PARTS` with its defaults (shards and threads sized to the
  cluster), then the held-out queries through `ShardedIndex.search` on the built index (same ef sweep),
  then a streaming `shardwalk query` of the base vectors twice (2n queries) into Parquet parts.
Ratios are the result; the load average before and after is recorded (figures under load do not count).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.memory import TreeSampler

K, GRAPH_K, EF = 10, 11, 64
PART_ROWS = 100_000
EF_SWEEP = [16, 24, 32, 48, 64, 96, 128, 192, 256]
TARGET = 0.95


# ----------------------------------------------------------------------------- data


def _centres(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 0])
    c = max(1, n // 1000)
    return rng.normal(size=(c, dim)).astype(np.float32), rng.uniform(0.05, 0.5, size=(c, dim)).astype(np.float32)


def generate_rows(n: int, dim: int, seed: int, stream: int, centres: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """`n` clustered vectors from random stream `stream` (parts and queries use different streams)."""
    mu, scale = centres
    rng = np.random.default_rng([seed, 1, stream])
    which = rng.integers(0, len(mu), size=n)
    return (mu[which] + rng.normal(size=(n, dim)).astype(np.float32) * scale[which]).astype(np.float32)


def vectors_table(ids: np.ndarray, x: np.ndarray) -> pa.Table:
    flat = pa.array(x.reshape(-1))
    return pa.table({"id": pa.array(ids, pa.int64()), "vector": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])})


def generate(directory: Path, n: int, dim: int, queries: int, seed: int = 0) -> None:
    """Base parts (ids 0..n-1) in `directory/base`, held-out queries in `directory/queries.parquet`."""
    centres = _centres(n, dim, seed)
    (directory / "base").mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, n, PART_ROWS)):
        rows = min(PART_ROWS, n - start)
        x = generate_rows(rows, dim, seed, part + 1, centres)
        pq.write_table(vectors_table(np.arange(start, start + rows), x), directory / "base" / f"part-{part:05d}.parquet")
    q = generate_rows(queries, dim, seed, 0, centres)
    pq.write_table(vectors_table(np.arange(queries), q), directory / "queries.parquet")


def load_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path)
    vec = table.column("vector").combine_chunks()
    return table.column("id").to_numpy(), vec.values.to_numpy().reshape(len(vec), vec.type.list_size)


def exact_knn(base_dir: Path, q: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids of `q` over every base part (blocked numpy, merged part by part)."""
    best_d = np.full((len(q), 0), np.inf, np.float32)
    best_i = np.empty((len(q), 0), np.int64)
    q_sq = (q * q).sum(1)[:, None]
    for part in sorted(base_dir.glob("*.parquet")):
        ids, x = load_vectors(part)
        d = q_sq - 2 * q @ x.T + (x * x).sum(1)[None, :]
        top = np.argpartition(d, k, axis=1)[:, :k] if d.shape[1] > k else np.argsort(d, axis=1)
        cand_d = np.hstack([best_d, np.take_along_axis(d, top, 1)])
        cand_i = np.hstack([best_i, ids[top]])
        order = np.argsort(cand_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(cand_d, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def qps_at_recall(sweep: list[dict[str, float]], target: float = TARGET) -> float | None:
    """Highest QPS among sweep points whose recall reaches `target` (None if none does)."""
    above = [p["qps"] for p in sweep if p["recall"] >= target]
    return max(above) if above else None


# ----------------------------------------------------------------------------- the hnswlib job (own process)


def hnswlib_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Build, all-points graph, query sweep: hnswlib alone in this process, timed step by step."""
    import hnswlib

    work = Path(spec["work"])
    parts = [load_vectors(p) for p in sorted((work / "base").glob("*.parquet"))]
    ids = np.concatenate([p[0] for p in parts])
    x = np.concatenate([p[1] for p in parts])
    del parts
    threads = spec["threads"]
    started = time.perf_counter()
    index = hnswlib.Index(space="l2", dim=x.shape[1])
    index.init_index(max_elements=len(x), M=spec["M"], ef_construction=spec["ef_construction"], random_seed=100)
    index.add_items(x, ids, num_threads=threads)
    build = time.perf_counter() - started
    index.set_ef(EF)
    started = time.perf_counter()
    sample = np.load(work / "graph_sample.npy")
    graph_rows = None
    for start in range(0, len(x), PART_ROWS):  # batched like a user would, to bound the answer arrays
        labels, _ = index.knn_query(x[start : start + PART_ROWS], k=GRAPH_K, num_threads=threads)
        if graph_rows is None:
            graph_rows = np.empty((len(x), GRAPH_K - 1), np.int64)
        own = ids[start : start + PART_ROWS, None]
        keep = labels != own
        keep[keep.all(1), -1] = False
        graph_rows[start : start + len(labels)] = labels[keep].reshape(len(labels), GRAPH_K - 1)
    graph = time.perf_counter() - started
    _, q = load_vectors(work / "queries.parquet")
    truth = np.load(work / "truth.npy")
    sweep = []
    for ef in EF_SWEEP:
        index.set_ef(ef)
        started = time.perf_counter()
        labels, _ = index.knn_query(q, k=K, num_threads=threads)
        sweep.append({"ef": ef, "recall": recall(labels, truth), "qps": len(q) / (time.perf_counter() - started)})
    graph_truth = np.load(work / "graph_truth.npy")
    return {"build_seconds": build, "knn_graph_seconds": graph, "sweep": sweep,
            "graph_recall_at_10": recall(graph_rows[sample], graph_truth)}


# ----------------------------------------------------------------------------- subprocess runs with sampling


def run_sampled(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `cmd`, sampling its process tree's PSS; returns wall seconds, peaks and its stdout."""
    started = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        sampler = TreeSampler(proc.pid)
        sampler.start()
        out, _ = proc.communicate()
        sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}...: exit {proc.returncode}")
    return {"seconds": time.perf_counter() - started, "peak_pss_bytes": sampler.peak_pss,
            "peak_root_rss_bytes": sampler.peak_root_rss, "samples": sampler.samples,
            "peak_breakdown": [[name, size] for name, size in sampler.peak_breakdown], "stdout": out}


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.bench_scale", *args]


def ray_idle(seconds: float = 8.0) -> int:
    """Peak PSS of an embedded Ray doing nothing (its idle footprint, subtracted in peak_memory_ratio)."""
    code = f"from shardwalk.pipelines.runtime import connect; import time; connect(); time.sleep({seconds})"
    return run_sampled([sys.executable, "-c", code])["peak_pss_bytes"]


def shardwalk_side(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`shardwalk run index` with defaults; then held-out queries and the graph sample on its outputs."""
    runs = work / "runs"
    cmd = [sys.executable, "-m", "shardwalk.pipelines.cli", "run", "index", "--runs-dir", str(runs),
           "--set", f"source={work / 'base'}", "--set", f"ef={EF}", "--set", f"k={K}"]
    run = run_sampled(cmd)
    record = json.loads(next((runs / "runs").glob("*/run.json")).read_text())
    stages = record["stages"]
    return {"pipeline": run, "stages": {name: {"seconds": s.get("seconds"), "metrics": s.get("metrics")}
                                         for name, s in stages.items()},
            "build_dir": stages["build"]["output"], "graph_dir": stages["knn_graph"]["output"]}


def query_side(work: Path, build_dir: str) -> dict[str, Any]:
    """The held-out queries through ShardedIndex.search (defaults) over the same ef sweep, in its own process."""
    return json.loads(run_sampled(_py("--search-job", json.dumps({"work": str(work), "build": build_dir})))["stdout"])


def search_job(spec: dict[str, Any]) -> dict[str, Any]:
    from shardwalk.pipelines.runtime import connect
    from shardwalk.workers.sharded_index import ShardedIndex

    connect()
    work = Path(spec["work"])
    _, q = load_vectors(work / "queries.parquet")
    truth = np.load(work / "truth.npy")
    sweep = []
    with ShardedIndex.open(spec["build"]) as index:
        index.search(q[:100], k=K, ef=EF)  # warm-up
        for ef in EF_SWEEP:
            started = time.perf_counter()
            found = index.search(q, k=K, ef=ef, batch_size=len(q))
            sweep.append({"ef": ef, "recall": recall(found.ids, truth), "qps": len(q) / (time.perf_counter() - started)})
    return {"sweep": sweep}


def stream_side(work: Path, build_dir: str, repeats: int) -> dict[str, Any]:
    """`shardwalk query` of the base vectors `repeats` times; every answer row must be written exactly once."""
    source = work / "stream_queries"
    source.mkdir(exist_ok=True)
    for r in range(repeats):
        for part in sorted((work / "base").glob("*.parquet")):
            link = source / f"r{r}-{part.name}"
            if not link.exists():
                link.symlink_to(part)
    out = work / "answers"
    run = run_sampled([sys.executable, "-m", "shardwalk.pipelines.cli", "query", build_dir, "--queries", str(source), "--out", str(out)])
    ids = pq.read_table(out, columns=["id"]).column("id").to_numpy()
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in (work / "base").glob("*.parquet"))
    counts = np.bincount(ids, minlength=n)
    return {"queries": len(ids), "seconds": run["seconds"], "query_qps": len(ids) / run["seconds"],
            "driver_peak_rss_bytes": run["peak_root_rss_bytes"], "peak_pss_bytes": run["peak_pss_bytes"],
            "every_answer_once": bool(len(ids) == repeats * n and (counts == repeats).all())}


# ----------------------------------------------------------------------------- the run


def prepare(work: Path, args: argparse.Namespace) -> None:
    generate(work, args.n, args.dim, args.queries)
    _, q = load_vectors(work / "queries.parquet")
    np.save(work / "truth.npy", exact_knn(work / "base", q, K))
    sample = np.sort(np.random.default_rng(1).choice(args.n, size=min(args.graph_sample, args.n), replace=False))
    np.save(work / "graph_sample.npy", sample)
    part_of = sample // PART_ROWS
    xs = [load_vectors(work / "base" / f"part-{p:05d}.parquet")[1][sample[part_of == p] - p * PART_ROWS]
          for p in np.unique(part_of)]
    truth = exact_knn(work / "base", np.concatenate(xs), GRAPH_K)
    keep = truth != sample[:, None]
    keep[keep.all(1), -1] = False
    np.save(work / "graph_truth.npy", truth[keep].reshape(len(sample), GRAPH_K - 1))


def summarise(base: dict[str, Any], hn_mem: int, sw: dict[str, Any], search: dict[str, Any], stream: dict[str, Any] | None,
              idle: int, graph_recall: float) -> dict[str, Any]:
    build_s = sw["stages"]["build"]["seconds"]
    graph_s = sw["stages"]["knn_graph"]["seconds"]
    at_default = next(p for p in search["sweep"] if p["ef"] == EF)
    qps_sw, qps_hn = qps_at_recall(search["sweep"]), qps_at_recall(base["sweep"])
    peak_sw = sw["pipeline"]["peak_pss_bytes"]
    out = {
        "recall_at_10": at_default["recall"],
        "graph_recall_at_10": graph_recall,
        "build_throughput_ratio_vs_hnswlib": base["build_seconds"] / build_s,
        "knn_graph_throughput_ratio_vs_hnswlib": base["knn_graph_seconds"] / graph_s,
        "pipeline_wall_ratio_vs_hnswlib": (base["build_seconds"] + base["knn_graph_seconds"]) / sw["pipeline"]["seconds"],
        "qps_ratio_vs_hnswlib_at_recall_095_default_config": qps_sw / qps_hn if qps_sw and qps_hn else None,
        "peak_pss_bytes": {"shardwalk": peak_sw, "hnswlib": hn_mem},
        "ray_idle_pss_bytes": idle,
        "peak_memory_ratio": (peak_sw - idle) / hn_mem,
    }
    if stream is not None:
        out.update({"query_qps": stream["query_qps"], "driver_peak_rss_bytes": stream["driver_peak_rss_bytes"],
                    "every_answer_written_once": stream["every_answer_once"], "stream_queries": stream["queries"]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="base vectors (default 1,000,000; --quick 100,000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries with exact ground truth")
    parser.add_argument("--graph-sample", type=int, default=1000, help="points whose graph rows are checked exactly")
    parser.add_argument("--stream-repeats", type=int, default=2, help="the streaming query answers the base this many times (0: skip)")
    parser.add_argument("--M", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="100,000 vectors (CI)")
    parser.add_argument("--workdir", default=None, help="where the data and runs go (default: a temporary directory)")
    parser.add_argument("--json", metavar="OUT.json", help="where the result goes (required)")
    parser.add_argument("--hnswlib-job", help=argparse.SUPPRESS)
    parser.add_argument("--search-job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hnswlib_job or args.search_job:
        job = hnswlib_job if args.hnswlib_job else search_job
        print(json.dumps(job(json.loads(args.hnswlib_job or args.search_job))))
        return 0
    if not args.json:
        parser.error("--json OUT.json is required")
    args.n = args.n or (100_000 if args.quick else 1_000_000)
    if min(args.n, args.dim, args.queries, args.graph_sample) < 1 or args.stream_repeats < 0:
        parser.error("--n, --dim, --queries and --graph-sample must be >= 1, --stream-repeats >= 0")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.workdir) as tmp:
        work = Path(tmp)
        print(f"generating {args.n} x {args.dim} clustered vectors + exact ground truth in {work} ...", file=sys.stderr)
        prepare(work, args)
        threads = os.cpu_count() or 1
        print("hnswlib in one process ...", file=sys.stderr)
        spec = {"work": str(work), "threads": threads, "M": args.M, "ef_construction": args.ef_construction}
        hn = run_sampled(_py("--hnswlib-job", json.dumps(spec)))
        base = json.loads(hn["stdout"])
        print("Ray idle footprint ...", file=sys.stderr)
        idle = ray_idle()
        print("shardwalk run index (defaults) ...", file=sys.stderr)
        sw = shardwalk_side(work, args)
        search = query_side(work, sw["build_dir"])
        graph = pq.read_table(sw["graph_dir"]).sort_by("id")
        sample = np.load(work / "graph_sample.npy")
        nbrs = np.array(graph.column("neighbors").take(pa.array(sample)).to_pylist())
        graph_recall = recall(nbrs, np.load(work / "graph_truth.npy"))
        stream = None
        if args.stream_repeats:
            print(f"streaming shardwalk query of {args.stream_repeats} x {args.n} queries ...", file=sys.stderr)
            stream = stream_side(work, sw["build_dir"], args.stream_repeats)
    sw["pipeline"].pop("stdout", None)
    result = {
        "n": args.n, "dim": args.dim, "queries": args.queries, "threads": threads, "quick": args.quick, "k": K, "ef": EF,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "hnswlib": {**base, "peak_pss_bytes": hn["peak_pss_bytes"], "wall_seconds": hn["seconds"]},
        "shardwalk": {"pipeline": sw["pipeline"], "stages": sw["stages"], "search": search, "stream": stream},
    }
    result.update(summarise(base, hn["peak_pss_bytes"], sw, search, stream, idle, graph_recall))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    for key in ("recall_at_10", "graph_recall_at_10", "build_throughput_ratio_vs_hnswlib", "knn_graph_throughput_ratio_vs_hnswlib",
                "pipeline_wall_ratio_vs_hnswlib", "qps_ratio_vs_hnswlib_at_recall_095_default_config", "peak_memory_ratio",
                "query_qps", "driver_peak_rss_bytes", "every_answer_written_once"):
        print(f"{key:52s} {result.get(key)}")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
