"""SA-SRRW token optimisation as a pipeline: ingest → agents → partition → walk → evaluate.

    shardwalk run srrw --set alpha=10 --set steps=50000 --set graph.name=barabasi_albert --set graph.n=900 \
        --set source=builtin:digits --set model.binarize=5

`agents` makes (or reads) the agent graph and places the data on agents; `partition` splits the agents
over walker actors; `walk` runs `shardwalk.workers.walker.run_distributed_sa_srrw` (each actor reads its own
agents' rows; tokens checkpointed in the stage's state directory, resumed on a rerun); `evaluate` computes θ*
with a full-batch Newton solve and writes the curves (loss, training accuracy, ‖θ−θ*‖²) as Parquet, and
warns (metric `warning`, printed after the run) when the final loss stays far above loss*.
`standardize = true` adds a `standardize` stage (features to mean 0, variance 1) before the agents.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray

from shardwalk.core import validate as validate_
from shardwalk.core.dag.attempt import stage_state_dir
from shardwalk.core.dag.cache_key import InputPath
from shardwalk.core.dag.runner import Pipeline
from shardwalk.core.data.builtin import test_mask
from shardwalk.core.data.schema import validate_assignment, vector_dim
from shardwalk.core.errors import ConfigError, DataError
from shardwalk.core.srrw import SRRW, WalkerLayout, WalkSpec, walk_partition
from shardwalk.core.srrw.agents import (
    agent_blocks,
    build_graph,
    cut_edge_fraction,
    edges_table,
    map_node_names,
    name_nodes,
    spread,
    standard_graph,
)
from shardwalk.core.srrw.block_loader import BlockLoader
from shardwalk.core.srrw.diagnostics import divergence_warning, last_fraction_mean
from shardwalk.core.srrw.objectives import build_objective
from shardwalk.core.storage import sink
from shardwalk.core.storage.files import write_parquet
from shardwalk.core.storage.labelled import read_labelled
from shardwalk.core.storage.sources import read_table
from shardwalk.pipelines.common import COLUMN_DEFAULTS, ingest_stage, read_label_map
from shardwalk.pipelines.reports.stage import srrw_report
from shardwalk.workers.ingest import part_paths, standardize_part, summarise_part

DEFAULTS: dict[str, Any] = {
    "source": InputPath("builtin:breast_cancer"),
    **COLUMN_DEFAULTS,
    "shards": 2,
    "graph": {
        "name": "karate",  # a shardwalk.core.srrw.agents.standard_graph name, or "file" to read `edges`
        "edges": InputPath(""),  # Parquet edge list (src, dst) when name = "file"
        "assignment": InputPath(""),  # Parquet (node, id) table; empty: spread the data over the agents
        "spread": "label_skew",  # iid | label_skew
        "n": 0,  # graph size parameters (0: the generator's default)
        "m": 0,
        "seed": 0,
    },
    "model": {"kind": "logistic", "lam": 0.1, "intercept": True, "binarize": -1},
    "alpha": 10.0,
    "base": "mhrw",
    "a": 0.8,
    "b": 0.9,
    "lr": 5.0,
    "steps": 20000,
    "tokens": 1,
    "partitions": 2,
    "partitioner": "metis",  # metis | kl | louvain | range (shardwalk.core.srrw.walk_partition)
    "halo": "auto",  # ghost rings per actor: an integer, or "auto" (from a pilot walk's cross rate)
    "replicate": "auto",  # true: every walker actor holds every agent's data and the tokens are split (no hand-offs);
    #                       auto: so when a copy per actor fits the nodes' memory, else the agents are partitioned
    "checkpoint_every": 5000,
    "record_every": 500,
    "standardize": True,  # scale every feature to mean 0, variance 1 before the walk (false: use the features as they are)
    "test_fraction": 0.2,  # held out of the agents' data (seeded by id): the walking model's held-out accuracy
    "split_seed": 0,
    "seed": 0,
}


def walk_spec(config: dict[str, Any]) -> WalkSpec:
    """The walk spec of a config (validated by WalkSpec itself: one validator per setting)."""
    return WalkSpec.build(steps=config["steps"], alpha=config["alpha"], base=config["base"], tokens=config["tokens"],
                          seed=config["seed"], a=config["a"], b=config["b"], lr=config["lr"],
                          record_every=config["record_every"])


def walker_layout(config: dict[str, Any]) -> WalkerLayout:
    """How the config spreads the walk over walker actors (the walk stage gets its partitions as a table)."""
    return WalkerLayout(partitions=config.get("partitions", 1), partitioner=config.get("partitioner", "metis"),
                        halo=config["halo"], checkpoint_every=config["checkpoint_every"],
                        replicate=config.get("replicate", "auto"))


def validate(config: dict[str, Any]) -> None:
    """Reject out-of-range values before anything runs."""
    validate_.shards(config["shards"])
    walk_spec(config)
    validate_.actor_group("partitions", walker_layout(config).partitions)  # walker actors: the one actor cap
    validate_.fraction("test_fraction", config["test_fraction"], closed_low=True)
    graph = config["graph"]
    if graph["name"] == "file" and not graph["edges"]:
        raise ConfigError("graph.name = 'file' needs graph.edges (a Parquet edge list)")
    if graph["spread"] not in ("iid", "label_skew"):
        raise ConfigError(f"graph.spread must be 'iid' or 'label_skew', got {graph['spread']!r}")
    if config["model"]["kind"] not in ("logistic", "softmax"):
        raise ConfigError(f"model.kind must be 'logistic' or 'softmax', got {config['model']['kind']!r}")
    if not config["model"]["lam"] >= 0:
        raise ConfigError(f"model.lam must be >= 0, got {config['model']['lam']}")


# ----------------------------------------------------------------------------- stages


def _ids_labels(ingest_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pads.dataset(str(ingest_dir), format="parquet").to_table(columns=["id", "label"])
    return table.column("id").to_numpy(), table.column("label").to_numpy()


def _graph_params(graph: dict[str, Any]) -> dict[str, int]:
    return {k: graph[k] for k in ("n", "m") if graph[k]} | ({"seed": graph["seed"]} if graph["name"] in (
        "barabasi_albert", "watts_strogatz", "random_regular") else {})


def agents(out: Path, ingest: Path, *, graph: dict[str, Any], seed: int, test_fraction: float = 0.0,
           split_seed: int = 0) -> dict[str, Any]:
    """The agent graph (edges.parquet) and the data placement (assignment.parquet), both validated.

    Rows of the seeded held-out split (`test_fraction`) are placed on no agent: `evaluate` scores the walking
    model on them. With a user's assignment, the rows it does not place are the held-out ones.
    """
    names = None
    if graph["name"] == "file":
        edges, names = name_nodes(read_table(graph["edges"]), where=graph["edges"])
        g = build_graph(edges, where=graph["edges"])
    else:
        g = standard_graph(graph["name"], **_graph_params(graph))
    ids, labels = _ids_labels(ingest)
    if names is not None:  # the user's node names, once, beside the graph
        write_parquet(pa.table({"node": pa.array(np.arange(len(names)), pa.int64()), "name": names}), out / "nodes.parquet")
    if graph["assignment"]:
        table = read_table(graph["assignment"])
        if names is not None and "node" in table.column_names:
            table = map_node_names(table, names, where=graph["assignment"])
        assign = validate_assignment(table, where=graph["assignment"])
    else:
        train = ~test_mask(ids, test_fraction, split_seed) if test_fraction > 0 else np.ones(len(ids), dtype=bool)
        assign = spread(ids[train], labels[train], sorted(g.nodes()), mode=graph["spread"], seed=seed)
    # the checks (every agent has data, every id exists) without touching the features
    agent_blocks(assign, ids, np.zeros((len(ids), 1)), labels, g, where=graph["assignment"] or "assignment")
    write_parquet(edges_table(g), out / "edges.parquet")
    write_parquet(assign, out / "assignment.parquet")
    placed = int(np.isin(ids, assign.column("id").to_numpy()).sum())
    return {"agents": g.number_of_nodes(), "edges": g.number_of_edges(), "examples": placed,
            "held_out": len(ids) - placed}


def _load_graph(agents_dir: Path):
    return build_graph(read_table(agents_dir / "edges.parquet"), where=str(agents_dir / "edges.parquet"))


def partition_stage(out: Path, agents: Path, *, partitions: int, base: str, seed: int,
                    partitioner: str = "metis") -> dict[str, Any]:
    """Balanced partition of the agents that the walk crosses rarely: parts.parquet (node, part)."""
    g = _load_graph(agents)
    parts = walk_partition(SRRW(g, 0.0, base), g, partitions, seed=seed, method=partitioner)
    nodes = np.asarray(sorted(parts), dtype=np.int64)
    write_parquet(pa.table({"node": nodes, "part": np.asarray([parts[n] for n in nodes], dtype=np.int64)}),
                  out / "parts.parquet")
    return {"partitions": partitions, "cut_edge_fraction": cut_edge_fraction(g, parts)}


def _loader(ingest_dir: Path, agents_dir: Path, model: dict[str, Any]) -> BlockLoader:
    return BlockLoader(
        vectors=sink.readable(ingest_dir), assignment=sink.readable(agents_dir / "assignment.parquet"), model=model["kind"],
        lam=model["lam"], intercept=model["intercept"], binarize=class_threshold(ingest_dir, model["binarize"]),
        classes=None,
    )


def class_threshold(ingest_dir: Path, binarize: int) -> int | None:
    """`binarize` is a label value (yours); the parts hold class indices, so compare against the first class >= it."""
    if binarize < 0:
        return None
    values = read_label_map(ingest_dir)
    return binarize if values is None else int(np.searchsorted(values, binarize))


def _dim(ingest_dir: Path, model: dict[str, Any]) -> tuple[int, int]:
    """(θ dimension, classes) from the ingest schema and labels."""
    d = vector_dim(pads.dataset(str(ingest_dir), format="parquet").schema) + int(model["intercept"])
    _, labels = _ids_labels(ingest_dir)
    classes = 2 if model["binarize"] >= 0 else int(labels.max()) + 1
    return (d if model["kind"] == "logistic" else d * classes), classes


def walk_stage(out: Path, ingest: Path, agents: Path, partition: Path, *, model: dict[str, Any],
               settings: dict[str, Any], seed: int) -> dict[str, Any]:
    """Run the tokens on walker actors; write tokens.parquet (final θ) and trajectory.parquet (θ snapshots)."""
    from shardwalk.workers.walker import (
        run_distributed_sa_srrw,  # Ray: loaded when a walk runs, not by plan or --show-config
    )

    spec, layout = walk_spec({**settings, "seed": seed}), walker_layout(settings)
    g = _load_graph(agents)
    parts_table = read_table(partition / "parts.parquet")
    parts = dict(zip(parts_table.column("node").to_pylist(), parts_table.column("part").to_pylist()))
    dim, classes = _dim(ingest, model)
    loader = _loader(ingest, agents, model)
    if model["kind"] == "softmax":
        loader = dataclasses.replace(loader, classes=classes)
    # checkpoints live in the stage's state directory: keyed like its output (stage version, code, every
    # setting, upstream keys), removed once the walk is committed, retired by --force
    ckpt = stage_state_dir()
    result = run_distributed_sa_srrw(loader, g, spec, layout, dim=dim, parts=parts, checkpoint_dir=ckpt,
                                     resume=ckpt is not None)
    toks = result.tokens
    write_parquet(pa.table({
        "token": [t.key for t in toks], "steps": [t.n for t in toks], "handoffs": [t.handoffs for t in toks],
        "theta": [t.theta.tolist() for t in toks],
    }), out / "tokens.parquet")
    nodes = np.asarray(sorted(g.nodes()), dtype=np.int64)  # the order of the visit measure's entries
    write_parquet(pa.table({
        "token": np.repeat(np.asarray([t.key for t in toks], dtype=np.int64), len(nodes)),
        "node": np.tile(nodes, len(toks)), "visit": np.concatenate([t.visit_measure() for t in toks]),
    }), out / "visits.parquet")
    rows = [(t.key, n, th.tolist()) for t in toks for n, th in zip(t.curve_n, t.curve_theta)]
    rows += [(t.key, t.n, t.theta.tolist()) for t in toks if not t.curve_n or t.curve_n[-1] != t.n]
    write_parquet(pa.table({
        "token": pa.array([r[0] for r in rows], pa.int64()), "step": pa.array([r[1] for r in rows], pa.int64()),
        "theta": pa.array([r[2] for r in rows], pa.list_(pa.float64())),
    }), out / "trajectory.parquet")
    st = result.stats
    secs = st["walk_seconds"]
    thetas = np.stack([t.theta for t in toks])
    return {"tokens": len(toks), "handoffs": int(st["handoffs"]),
            "layout": "replicate" if st["replicated"] else "partitioned",
            "hops_per_s": round(sum(t.n for t in toks) / secs, 1) if secs else None,
            "hops_per_actor_cpu_second": round(st["hops_per_actor_cpu_second"], 1),
            "bytes_per_crossing": round(st["bytes_per_crossing"], 1), "cut_fraction": round(st["cut_fraction"], 5),
            "handoffs_per_1000_hops": round(st["handoffs_per_1000_hops"], 3), "halo": int(st["halo"]),
            "theta_spread_across_tokens": float(np.linalg.norm(thetas.std(axis=0)))}


def evaluate(out: Path, ingest: Path, agents: Path, walk: Path, *, model: dict[str, Any], standardize: bool = False) -> dict[str, Any]:
    """θ* by full-batch Newton; curves.parquet: per token and step, loss, training accuracy, held-out
    accuracy (rows placed on no agent, when there are any) and ‖θ−θ*‖²."""
    g = _load_graph(agents)
    ids, x, y = read_labelled(ingest, binarize=class_threshold(ingest, model["binarize"]), validated=True)
    assignment = read_table(agents / "assignment.parquet")
    blocks = agent_blocks(assignment, ids, x, y, g)
    obj = build_objective(model["kind"], blocks, lam=model["lam"], intercept=model["intercept"])
    held = ~np.isin(ids, assignment.column("id").to_numpy())
    test_obj = (build_objective(model["kind"], {0: (x[held].astype(np.float64), y[held])}, lam=model["lam"],
                                intercept=model["intercept"]) if held.any() else None)
    star = obj.solve()
    traj = read_table(walk / "trajectory.parquet")
    thetas = np.asarray(traj.column("theta").to_pylist(), dtype=np.float64)
    if thetas.shape[1] != obj.dim:
        raise DataError(f"{walk}: θ has dimension {thetas.shape[1]}, the model needs {obj.dim}")
    write_parquet(pa.table({
        "token": traj.column("token"), "step": traj.column("step"),
        "loss": [obj.loss(t) for t in thetas], "accuracy": [obj.accuracy(t) for t in thetas],
        "test_accuracy": [test_obj.accuracy(t) if test_obj else float("nan") for t in thetas],
        "sq_error": np.sum((thetas - star) ** 2, axis=1),
    }), out / "curves.parquet")
    final = read_table(walk / "tokens.parquet")
    theta = np.mean(np.asarray(final.column("theta").to_pylist(), dtype=np.float64), axis=0)
    write_parquet(pa.table({"dim": np.arange(obj.dim), "theta": theta, "theta_star": star}), out / "theta.parquet")
    sq_errors = np.sum((thetas - star) ** 2, axis=1)
    metrics: dict[str, Any] = {
        "loss": obj.loss(theta), "loss_star": obj.loss(star), "train_accuracy": obj.accuracy(theta),
        "sq_error": float(np.sum((theta - star) ** 2)),
        "sq_error_last_quarter": last_fraction_mean(traj.column("step").to_numpy(), sq_errors),
    }
    if test_obj is not None:
        metrics["test_accuracy"], metrics["test_rows"] = test_obj.accuracy(theta), int(held.sum())
    hint = "" if standardize else "; the features may need scaling: set standardize = true"
    warning = divergence_warning(metrics["loss"], metrics["loss_star"], hint=hint)
    if warning:
        metrics["warning"] = warning
    return metrics


def standardize_data(out: Path, ingest: Path) -> dict[str, Any]:
    """Every feature to mean 0 and variance 1 (constant features to 0): gradient steps then share one scale."""
    parts = part_paths(ingest)
    stats = ray.get([summarise_part.remote(sink.readable(p)) for p in parts])  # tasks on any node read the store
    n = sum(s["rows"] for s in stats)
    mean = sum(s["sum"] for s in stats) / n
    std = np.sqrt(np.maximum(sum(s["sumsq"] for s in stats) / n - mean**2, 0.0))
    scale = np.where(std > 0, std, 1.0)
    sink.record(ray.get([standardize_part.remote(sink.readable(p), sink.destination(out), p.name, mean, scale) for p in parts]))
    for extra in ingest.glob("_labels.json"):
        shutil.copy2(extra, out / extra.name)
    return {"rows": n, "dim": len(mean), "constant_features": int((std == 0).sum())}


WALK_KEYS = ("alpha", "base", "a", "b", "lr", "steps", "tokens", "halo", "checkpoint_every", "record_every")


def add_placement_stages(p: Pipeline, config: dict[str, Any], *, data: str = "ingest", agents_name: str = "agents",
                         partition_name: str = "partition") -> None:
    """Add `agents` (graph + data placement) and `partition` (agents over walker actors) from a validated config."""
    p.stage(agents_name, agents, inputs={"ingest": data}, version="2", params={
        "graph": config["graph"], "seed": config["seed"], "test_fraction": config["test_fraction"],
        "split_seed": config["split_seed"]})
    p.stage(partition_name, partition_stage, inputs={"agents": agents_name},
            params={"partitions": config["partitions"], "base": config["base"], "seed": config["seed"],
                    "partitioner": config["partitioner"]})


def add_walk_stages(p: Pipeline, config: dict[str, Any], *, data: str = "ingest", agents_name: str = "agents",
                    partition_name: str = "partition", walk_name: str = "walk",
                    curves_name: str | None = "evaluate") -> None:
    """Add `walk` (the tokens on walker actors) and its `evaluate` (curves against θ*; none when `curves_name`
    is None) from a validated config."""
    settings = {k: config[k] for k in WALK_KEYS}
    settings |= {"replicate": config["replicate"], "partitions": config["partitions"]}
    p.stage(walk_name, walk_stage, inputs={"ingest": data, "agents": agents_name, "partition": partition_name},
            num_cpus=0, params={"model": config["model"], "settings": settings, "seed": config["seed"]})
    if curves_name is None:
        return
    p.stage(curves_name, evaluate, inputs={"ingest": data, "agents": agents_name, "walk": walk_name}, version="3",
            params={"model": config["model"], "standardize": config["standardize"]})


def build(config: dict[str, Any]) -> Pipeline:
    """ingest → [standardize] → agents → partition → walk → evaluate → report."""
    p = Pipeline("srrw")
    ingest_stage(p, config, require_label=True)
    data = "ingest"
    if config["standardize"]:
        p.stage("standardize", standardize_data, inputs=["ingest"], num_cpus=0)
        data = "standardize"
    add_placement_stages(p, config, data=data)
    add_walk_stages(p, config, data=data)
    p.stage("report", srrw_report, inputs=["walk", "evaluate"], num_cpus=0)
    return p
