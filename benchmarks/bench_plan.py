"""Predictions of `shardwalk plan` against measurements: wall time and peak memory of real runs.

    python -m benchmarks.bench_plan --json benchmarks/results/plan_validation.json           # ~1.5 h (1M rows)
    python -m benchmarks.bench_plan --quick --json benchmarks/results/plan_validation.json   # ~15 min, no 1M
    python -m benchmarks.bench_plan --only index-200k,srrw-karate-2 --json F   # rerun noisy points into F
    python -m benchmarks.bench_plan --smoke --json /tmp/plan.json              # tiny sizes: does it run?
    python -m benchmarks.bench_plan --sample --json benchmarks/results/plan_sample.json  # ~5 min: plan --sample

Every point runs `shardwalk run PIPELINE` in a fresh process with a fresh runs directory (no cache hits),
sampling the PSS of the whole process tree (driver, Ray, every worker; benchmarks/memory.py) every second,
and compares wall time, each stage's seconds and the peak with what `shardwalk.core.plan.cost_model` predicts from the
calibration in use (the shipped one, or --calibration). Points: the index pipeline at 100k, 200k and 1M
rows (128-d, bench_scale's clustered data), coreset scoring at two sizes, SRRW on two graphs with 1 and 2
walker actors, and the index pipeline at 100k on a simulated 3-node cluster (`ray.cluster_utils.Cluster`:
a head without CPUs and two 1-CPU nodes). A row is `within_35pct` when both its time and its peak memory
are within ±35 % of the measurement. The load average is recorded around every point.

`--sample` validates `shardwalk plan --sample` instead (#29 item 4) on data that is not the calibration's:
text-embedding-like vectors (128-d, a power-law spectrum over 64 topics, unit length; `textlike_rows`),
run through the index pipeline with its defaults (HNSW build + partition graph) and again with
`knn_graph.method=hnsw` (the build a cache hit, the graph through the index). Each measured `build` and
`knn_graph` stage is set beside the plan from the calibration alone and the plan from a sample of the same
source (measured in this process, as `plan --sample` does); a stage is `within_35pct` when the sampled
prediction is within ±35 % of it. The `knn_graph` stage is set beside the sampled price of the method the run
ran (its metrics name it); `graph_method_predicted_right` says whether the plan picked that method too, and
`stage_metrics` keeps each stage's own step timings. numba's kernels are loaded once before anything is timed
(a first run after installing compiles them for seconds, which no plan prices).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.memory import TreeSampler, pss_bytes
from shardwalk.core.plan import cost_model as cm
from shardwalk.core.plan.calibration import Calibration, load
from shardwalk.core.plan.sizing import Node

TOLERANCE = 0.35
SAMPLE_INTERVAL_S = 1.0  # at 0.5 s sampling took ~1.5 s of a 13 s run (the srrw run: 11.4-11.9 s unsampled)


@dataclass(frozen=True)
class Point:
    """One validation point: a pipeline, its --set options, the data it writes first, and where it runs.
    The model sees the job exactly as `shardwalk plan` derives it from the same config."""

    name: str
    pipeline: str
    sets: dict[str, Any]
    data: Callable[[Path], None] = field(default=lambda work: None)
    simulated_nodes: int = 0  # > 0: run on a ray.cluster_utils.Cluster (head without CPUs + this many 1-CPU nodes)


def _vectors_dir(n: int, dim: int = 128) -> Callable[[Path], None]:
    def write(work: Path) -> None:
        import pyarrow.parquet as pq

        from benchmarks.bench_scale import PART_ROWS, _centres, generate_rows, vectors_table

        (work / "data").mkdir(parents=True, exist_ok=True)
        centres = _centres(n, dim, 0)
        for part, start in enumerate(range(0, n, PART_ROWS)):
            rows = min(PART_ROWS, n - start)
            x = generate_rows(rows, dim, 0, part + 1, centres)
            pq.write_table(vectors_table(np.arange(start, start + rows), x), work / "data" / f"part-{part:05d}.parquet")
    return write


def _labelled_dir(n: int, dim: int = 40) -> Callable[[Path], None]:
    def write(work: Path) -> None:
        import pyarrow.parquet as pq

        from shardwalk.core.data.builtin import synthetic
        from shardwalk.core.data.schema import from_numpy

        (work / "data").mkdir(parents=True, exist_ok=True)
        x, y = synthetic(n, dim)
        pq.write_table(from_numpy(x, labels=y), work / "data" / "part-00000.parquet")
    return write


def textlike_rows(n: int, dim: int, seed: int, stream: int) -> np.ndarray:
    """`n` unit vectors shaped like text embeddings: a power-law spectrum (σ_i ∝ i^-0.6) in a random basis
    around 64 topic centres; the basis and topics depend on `seed` only, the rows on `stream` too."""
    shared = np.random.default_rng([seed, 7])
    basis, _ = np.linalg.qr(shared.standard_normal((dim, dim)))
    spectrum = (np.arange(1, dim + 1) ** -0.6).astype(np.float32)
    topics = shared.standard_normal((64, dim)).astype(np.float32) * spectrum * 1.5
    rng = np.random.default_rng([seed, 8, stream])
    z = rng.standard_normal((n, dim)).astype(np.float32) * spectrum + topics[rng.integers(0, 64, n)]
    x = (z @ basis).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _textlike_dir(n: int, dim: int = 128) -> Callable[[Path], None]:
    def write(work: Path) -> None:
        import pyarrow.parquet as pq

        from benchmarks.bench_scale import PART_ROWS, vectors_table

        (work / "data").mkdir(parents=True, exist_ok=True)
        for part, start in enumerate(range(0, n, PART_ROWS)):
            x = textlike_rows(min(PART_ROWS, n - start), dim, 0, part + 1)
            pq.write_table(vectors_table(np.arange(start, start + len(x)), x), work / "data" / f"part-{part:05d}.parquet")
    return write


def points(smoke: bool) -> list[Point]:
    """The validation points (tiny sizes with `smoke`)."""
    index_sizes = {"100k": 100_000, "200k": 200_000, "1m": 1_000_000} if not smoke else {"100k": 5_000}
    out = [Point(f"index-{label}", "index", {}, _vectors_dir(n)) for label, n in index_sizes.items()]
    proxy = {"proxy.models": 4, "proxy.epochs": 2 if smoke else 5, "evaluate.enabled": False}
    for n in ((3_000,) if smoke else (20_000, 60_000)):
        out.append(Point(f"coreset-{n // 1000}k", "coreset", {**proxy, "actors": 2}, _labelled_dir(n)))
    steps = 2_000 if smoke else 20_000
    for graph, source, extra in (("karate", "builtin:breast_cancer", {}),
                                 ("barabasi_albert", "builtin:digits", {"graph.n": 900, "model.binarize": 5})):
        for actors in (1, 2):
            sets = {"graph.name": graph, "source": source, "partitions": actors, "tokens": 4, "steps": steps, **extra}
            label = "ba900" if graph == "barabasi_albert" else graph
            out.append(Point(f"srrw-{label}-{actors}", "srrw", sets))
    n = 5_000 if smoke else 100_000
    out.append(Point(f"index-{n // 1000}k-3nodes", "index", {}, _vectors_dir(n), simulated_nodes=2))
    return out


def _job(pipeline: str, sets: dict[str, Any]) -> Any:
    """The job as `shardwalk plan` derives it from the same config (sizes from the source, graph measured)."""
    from shardwalk.pipelines.config import load_config, pipeline_module
    from shardwalk.pipelines.plan import Sizes, job_of

    config = load_config(pipeline_module(pipeline), None, [f"{k}={_toml(v)}" for k, v in sets.items()])
    return job_of(pipeline, config, Sizes())


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def run_point(point: Point, cal: Calibration, work: Path) -> dict[str, Any]:
    """Run one point, predict it, and compare."""
    point.data(work)
    sets = dict(point.sets) | ({"source": str(work / "data")} if (work / "data").exists() else {})
    job = _job(point.pipeline, sets)
    load_before = os.getloadavg()
    if point.simulated_nodes:
        measured, nodes = _run_on_simulated_cluster(point, sets, work)
    else:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        nodes = [Node(float(os.cpu_count() or 1), int(physical * cal.constants.ray_memory_fraction))]
        measured = _run_sampled(_command(point.pipeline, sets, work), None, baseline=0)
    plan = cm.plan_job(job, cm.Cluster(tuple(nodes)), cal)
    stages = _stage_seconds(work)
    return _compare(point, plan, measured, stages, load_before)


def _command(pipeline: str, sets: dict[str, Any], work: Path, address: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "shardwalk.pipelines.cli", "run", pipeline, "--runs-dir", str(work / "runs")]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={_toml(value)}"]
    return cmd + (["--address", address] if address else [])


def _run_sampled(cmd: list[str], root: int | None, baseline: int) -> dict[str, Any]:
    """Wall seconds and peak PSS of `cmd`'s tree (or of `root`'s tree, which holds a simulated cluster)."""
    began = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        sampler = TreeSampler(proc.pid if root is None else root, interval=SAMPLE_INTERVAL_S)
        sampler.start()
        _, err = proc.communicate()
        sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:6])}: exit {proc.returncode}: {err.strip().splitlines()[-1:]}")
    return {"seconds": time.perf_counter() - began, "peak_bytes": sampler.peak_pss - baseline,
            "sampler_cpu_seconds": sampler.cpu_seconds}


def _run_on_simulated_cluster(point: Point, sets: dict[str, Any], work: Path) -> tuple[dict[str, Any], list[Node]]:
    from benchmarks.faultkit import simulated_cluster
    from shardwalk.workers.cluster import cluster_nodes

    own = pss_bytes(os.getpid())
    with simulated_cluster(workers=point.simulated_nodes) as cluster:
        nodes = cluster_nodes()
        measured = _run_sampled(_command(point.pipeline, sets, work, cluster.address), os.getpid(), own)
    return measured, nodes


def _stage_seconds(work: Path) -> dict[str, float]:
    record = json.loads(next((work / "runs" / "runs").glob("*/run.json")).read_text())
    return {name: s.get("seconds") or 0.0 for name, s in record["stages"].items()}


def _within(predicted: float, measured: float) -> bool:
    return measured > 0 and abs(predicted - measured) <= TOLERANCE * measured


def _compare(point: Point, plan: cm.Plan, measured: dict[str, Any], stages: dict[str, float],
             load_before: tuple[float, ...]) -> dict[str, Any]:
    time_ok = _within(plan.seconds, measured["seconds"])
    memory_ok = _within(plan.peak_bytes, measured["peak_bytes"])
    per_stage = {s.name: {"predicted_seconds": round(s.seconds, 2), "measured_seconds": stages.get(s.name)}
                 for s in plan.stages}
    return {"name": point.name, "pipeline": point.pipeline, "settings": point.sets, "layout": plan.layout,
            "nodes": len(plan.cluster.nodes), "predicted_seconds": round(plan.seconds, 2),
            "measured_seconds": round(measured["seconds"], 2), "seconds_ratio": plan.seconds / measured["seconds"],
            "sampler_cpu_seconds": round(measured["sampler_cpu_seconds"], 2),
            "predicted_peak_bytes": plan.peak_bytes, "measured_peak_bytes": measured["peak_bytes"],
            "peak_ratio": plan.peak_bytes / max(measured["peak_bytes"], 1), "within_35pct_time": time_ok,
            "within_35pct_memory": memory_ok, "within_35pct": time_ok and memory_ok, "stages": per_stage,
            "bottleneck_predicted": plan.bottleneck.name,
            "bottleneck_measured": max(stages, key=stages.get) if stages else None,
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}


SAMPLE_VARIANTS = (("defaults", {}), ("graph-through-hnsw", {"knn_graph.method": "hnsw"}))


def run_sample_comparison(rows: int, sample_rows: int, cal: Calibration, work: Path) -> dict[str, Any]:
    """Measure the index pipeline on text-like data and set each stage beside the calibration's plan and
    the sampled plan (the runs share a runs directory: the second reuses ingest and build)."""
    from shardwalk.core.plan.sample_costs import measure

    _textlike_dir(rows)(work)
    source = str(work / "data")
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cluster = cm.Cluster((Node(float(os.cpu_count() or 1), int(physical * cal.constants.ray_memory_fraction)),))
    from shardwalk.core.index.knn_partition import warm_kernels

    warm_kernels(2, "partition")  # numba's on-disk cache filled as after any earlier run: no compiling is measured
    load_before = os.getloadavg()
    job = _job("index", {"source": source})
    began = time.perf_counter()
    costs = measure(source, k=job.k, M=job.M, ef_construction=job.ef_construction, ef=job.ef, settings=job.graph,
                    rows=sample_rows)
    sample_wall = time.perf_counter() - began
    out = {"data": f"text-like {rows:,} x 128 (benchmarks.bench_plan.textlike_rows)", "rows": rows,
           "sample": costs.as_json() | {"wall_seconds": round(sample_wall, 2)}, "variants": [],
           "load_average_before": list(load_before)}
    for name, sets in SAMPLE_VARIANTS:
        sets = {"source": source, **sets}
        job = _job("index", sets)
        measured = _run_sampled(_command("index", sets, work), None, baseline=0)
        stages = _newest_run_stages(work)
        by_cal = cm.plan_job(job, cluster, cal)
        by_sample = cm.plan_job(replace(job, sample=costs), cluster, cal)
        rows_out = {}
        # an `auto` stage names the method it ran; a named one is that method (the hnsw stage's metrics do not name it)
        ran = (stages.get("knn_graph", {}).get("metrics") or {}).get("method") or sets.get("knn_graph.method")
        for stage in ("build", "knn_graph"):
            got = stages.get(stage)
            if not got or got["status"] != "done":
                continue  # a cache hit: nothing measured
            p_cal = next(s.seconds for s in by_cal.stages if s.name == stage)
            p_sam = next(s.seconds for s in by_sample.stages if s.name == stage)
            if stage == "knn_graph" and ran and by_sample.layout.get("graph_method") != ran:  # the plan's pick is checked below
                p_sam = by_sample.layout["graph_stage_seconds_by_method"].get(ran, p_sam)
            rows_out[stage] = {"measured_seconds": round(got["seconds"], 2), "predicted_calibration": round(p_cal, 2),
                               "predicted_sample": round(p_sam, 2), "ratio_calibration": round(p_cal / got["seconds"], 3),
                               "ratio_sample": round(p_sam / got["seconds"], 3),
                               "within_35pct": _within(p_sam, got["seconds"])}
        out["variants"].append({"name": name, "sets": {k: v for k, v in sets.items() if k != "source"},
                                "graph_method": by_sample.layout.get("graph_method"), "graph_method_run": ran,
                                "graph_method_predicted_right": by_sample.layout.get("graph_method") == ran,
                                "stage_metrics": {n: _step_figures(s.get("metrics") or {}) for n, s in stages.items()
                                                  if n in ("build", "knn_graph")},
                                "stages": rows_out,
                                "run_seconds": round(measured["seconds"], 2),
                                "load_average_after": list(os.getloadavg())})
        for stage, r in rows_out.items():
            print(f"{name:>20} {stage:>9}: measured {r['measured_seconds']:7.1f} s, sampled plan "
                  f"{r['predicted_sample']:7.1f} s ({r['ratio_sample']:.2f}), calibration {r['predicted_calibration']:7.1f} s "
                  f"({r['ratio_calibration']:.2f})", flush=True)
    checked = [r for v in out["variants"] for r in v["stages"].values()]
    out["all_within_35pct"] = (bool(checked) and all(r["within_35pct"] for r in checked)
                               and all(v["graph_method_predicted_right"] for v in out["variants"]))
    return out


def _step_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """A stage's own timings and layout (the scalar metrics: seconds of its steps, threads, method)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or k in ("threads_per_actor", "auto_priced_seconds")}


def _newest_run_stages(work: Path) -> dict[str, dict[str, Any]]:
    record = json.loads(max((work / "runs" / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime).read_text())
    return {name: {"status": s.get("status"), "seconds": s.get("seconds") or 0.0, "metrics": s.get("metrics")}
            for name, s in record["stages"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="results file (rows of an existing file are kept unless rerun)")
    parser.add_argument("--quick", action="store_true", help="skip the 1M-row index point")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs, measures nothing useful")
    parser.add_argument("--only", default="", help="comma-separated point names to (re)run, e.g. index-200k,srrw-karate-2")
    parser.add_argument("--calibration", help="calibration file (default: the shipped one)")
    parser.add_argument("--sample", action="store_true", help="validate `plan --sample` on text-like data instead")
    parser.add_argument("--sample-data-rows", type=int, default=200_000, help="--sample: rows of the text-like data")
    parser.add_argument("--sample-rows", type=int, default=30_000, help="--sample: rows the plan samples")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cal = load(args.calibration)
    if args.sample:
        with tempfile.TemporaryDirectory(prefix="bench-plan-sample-") as tmp:
            result = run_sample_comparison(args.sample_data_rows, args.sample_rows, cal, Path(tmp))
        result |= {"calibration": {"file": cal.source, "machine": cal.machine}, "tolerance": TOLERANCE,
                   "load_average_end": list(os.getloadavg())}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        return 0
    chosen = [p for p in points(args.smoke) if not (args.quick and p.name == "index-1m")]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {p.name for p in chosen}
        if unknown:
            parser.error(f"unknown point(s) {sorted(unknown)}; choose from {[p.name for p in chosen]}")
        chosen = [p for p in chosen if p.name in wanted]
    previous = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() and args.only else {}
    rows = {r["name"]: r for r in previous.get("rows", [])}
    for point in chosen:
        with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
            try:
                rows[point.name] = run_point(point, cal, Path(tmp))
            except RuntimeError as exc:  # a failed run is recorded, and the other points still run
                rows[point.name] = {"name": point.name, "error": str(exc)[:2000], "within_35pct": False}
                print(f"{point.name:>22}: failed: {str(exc)[:300]}", flush=True)
                continue
        r = rows[point.name]
        print(f"{r['name']:>22}: time {r['predicted_seconds']:8.1f} s predicted / {r['measured_seconds']:8.1f} s measured "
              f"({r['seconds_ratio']:.2f}), peak {r['peak_ratio']:.2f}, within 35 %: {r['within_35pct']}, "
              f"load {r['load_average_before'][0]:.1f}", flush=True)
    result = {"calibration": {"file": cal.source, "machine": cal.machine}, "tolerance": TOLERANCE,
              "smoke": args.smoke, "quick": args.quick, "rows": list(rows.values()),
              "all_within_35pct": all(r["within_35pct"] for r in rows.values()),
              "load_average_end": list(os.getloadavg())}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
