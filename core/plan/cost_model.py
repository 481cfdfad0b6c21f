"""Predict a job's layout, memory per node and wall time per stage before anything runs (`shardwalk plan`).

Time of a stage = its work / (throughput per core × the cores it uses) + fixed costs (Ray start, a stage's
first task, actor start-up, commit hashing). Memory of a node = the data and index it holds + a worker
process per actor. The index layout is `shardwalk.core.plan.sizing.plan` itself, and the scoring layout
`shardwalk.core.coresets.proxy_spec.plan_scoring`, so a plan and the run it predicts make the same choices. Every constant comes
from a calibration (`shardwalk.core.plan.calibration`), measured by `python -m benchmarks.calibrate`. Pure: no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shardwalk.core import validate
from shardwalk.core.coresets.proxy_spec import ProxySpec, TrainSpec, plan_scoring
from shardwalk.core.errors import ConfigError
from shardwalk.core.index.graph_settings import GraphSettings, partitions_for
from shardwalk.core.index.spec import DEFAULT_BUILD, DEFAULT_SEARCH
from shardwalk.core.plan import sizing
from shardwalk.core.plan.calibration import Calibration, Constants, NodeShape
from shardwalk.core.plan.limits import actor_bound
from shardwalk.core.plan.sample_costs import (
    SampleCosts,
    build_growth,
    exact_seconds,
    partition_seconds,
    query_growth,
)

HEADROOM = 0.10  # share of a node's Ray memory a plan keeps free (allocator slack, Python garbage, spikes)
MAX_NODES = 4096  # the smallest-cluster search gives up beyond this many nodes
SELECT_ROUNDS = 8  # actor calls per coreset selection (prepare, the summaries CCS asks for, write)


@dataclass(frozen=True)
class Cluster:
    """The nodes a job runs on (Ray's CPUs and `memory` resource per node) and their shape's name, if any."""

    nodes: tuple[sizing.Node, ...]
    shape: str = ""

    @classmethod
    def of_shape(cls, shape: NodeShape, count: int, ray_memory_fraction: float) -> Cluster:
        """`count` nodes of `shape`; Ray offers tasks `ray_memory_fraction` of each node's memory."""
        node = sizing.Node(float(shape.cpus), int(shape.memory_bytes * ray_memory_fraction))
        return cls((node,) * count, shape.name)

    @property
    def cpus(self) -> float:
        return sum(n.cpus for n in self.nodes)


@dataclass(frozen=True)
class StageCost:
    """One stage's predicted seconds, what dominates them, and the cores it keeps busy."""

    name: str
    seconds: float
    work: str
    cores: float


@dataclass(frozen=True)
class NodeMemory:
    """What one node must hold at the job's peak against what Ray lets it use (less the headroom)."""

    node: int
    actors: int
    need_bytes: int
    budget_bytes: int

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.budget_bytes


@dataclass(frozen=True)
class Plan:
    """A job's predicted layout, memory and time on one cluster, whether it fits, and what to change if not."""

    pipeline: str
    cluster: Cluster
    layout: dict
    stages: tuple[StageCost, ...]
    memory: tuple[NodeMemory, ...]
    peak_bytes: int  # the whole cluster's predicted peak (Ray's own processes included)
    problems: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    job: Any = None  # the job description planned (IndexJob, ScoringJob or WalkJob)

    @property
    def fits(self) -> bool:
        return not self.problems and all(m.fits for m in self.memory)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def bottleneck(self) -> StageCost:
        return max(self.stages, key=lambda s: s.seconds)


# ----------------------------------------------------------------------------- job descriptions


@dataclass(frozen=True)
class IndexJob:
    """The index pipeline's work: rows × dim vectors, hnswlib parameters, layout settings."""

    rows: int
    dim: int
    M: int = DEFAULT_BUILD.M
    ef_construction: int = DEFAULT_BUILD.ef_construction
    ef: int = DEFAULT_SEARCH.ef
    k: int = DEFAULT_SEARCH.k
    shards: int = 0  # 0: sized to the cluster (shardwalk.core.plan.sizing)
    replicas: int = 1
    memory_fraction: float = DEFAULT_BUILD.memory_fraction
    knn_graph: bool = True
    recall_sample: int = 500
    nprobe: int = 0  # k-means routing: shards asked per query (0: all, as with hash routing)
    hnsw: bool = True  # false: no HNSW build, the kNN graph only (the pipeline's `hnsw = false`)
    graph: GraphSettings = field(default_factory=GraphSettings)  # the `knn_graph` table: method and its settings
    sample: SampleCosts | None = None  # per-row costs measured on the user's data (`plan --sample`)


@dataclass(frozen=True)
class ScoringJob:
    """The coreset pipeline's work: rows × dim examples, proxies, selection and evaluation models."""

    rows: int
    dim: int
    classes: int = 10
    shards: int = 2
    models: int = ProxySpec.models  # the proxy defaults live in ProxySpec alone
    epochs: int = ProxySpec.epochs
    hidden: int = ProxySpec.hidden
    batch_size: int = ProxySpec.batch_size
    layout: str = ProxySpec.layout
    test_fraction: float = 0.2
    methods: int = 4
    rates: int = 4
    evaluate_models: int = 17  # one per (method, rate) plus the full-data model; 0 = evaluation off
    tuning_fits: int = 0  # β tuning's validation models, trained inside `select` (evaluate's settings)
    tuning_rounds: int = 0  # β tuning's selection rounds on fresh shard actors (candidates, then each refit seed)
    evaluate_steps: int = TrainSpec.steps
    evaluate_batch: int = TrainSpec.batch_size
    evaluate_hidden: int = TrainSpec.hidden
    knn: IndexJob | None = None


@dataclass(frozen=True)
class WalkJob:
    """The srrw pipeline's work: tokens × steps hops over `agents` holding rows × dim, on `partitions` actors."""

    agents: int
    edges: int
    rows: int
    dim: int
    tokens: int = 1
    steps: int = 20_000
    partitions: int = 2
    halo: int | str = "auto"  # "auto": the walker picks it from a pilot's cross rate; planned as AUTO_HALO
    cut_fraction: float = 0.1
    checkpoint_every: int = 5000
    record_every: int = 500
    replicate: bool | str = "auto"  # as WalkerLayout.replicate: "auto" is decided for the cluster planned on
    links: bool = True  # as WalkerLayout.links: partitioned walkers hand tokens over direct links, not Ray calls


# ----------------------------------------------------------------------------- shared formulas


def _hnsw_s_per_row(c: Constants, rows: float, dim: int, *, build: bool, scale: float) -> float:
    """Seconds per row per core of an hnswlib build (or one query) on an index of `rows` vectors."""
    base, per_dim, growth = ((c.build_s_per_row, c.build_s_per_row_per_dim, c.build_log_growth) if build
                             else (c.query_s_per_row, c.query_s_per_row_per_dim, c.query_log_growth))
    size = max(1.0, 1.0 + growth * math.log(max(rows, 2.0) / c.ref_rows))
    return (base + per_dim * dim) * scale * size


def _threads_speedup(c: Constants, threads: float) -> float:
    return 1.0 + max(threads - 1.0, 0.0) * c.thread_efficiency


def _stage(name: str, c: Constants, seconds: float, work: str, cores: float, hashed: float = 0.0) -> StageCost:
    """A stage: its task's overhead on a warm worker, its work, and the sha256 of its committed output bytes."""
    return StageCost(name, c.stage_overhead_s + seconds + hashed / c.sha256_bytes_per_s, work, cores)


def _start(c: Constants, cluster: Cluster) -> StageCost:
    """A run's seconds outside its stages: interpreter, imports, run records, and Ray started and stopped by the
    run (one node: `shardwalk run` embeds Ray) or joined (a cluster of several nodes is already up)."""
    if len(cluster.nodes) > 1:
        return StageCost("start", max(c.driver_s - c.ray_start_s, 0.0), "driver: imports, join the cluster, records", 0)
    return StageCost("start", c.driver_s, "driver: imports, start and stop Ray, records", 0)


def _ingest(c: Constants, rows: int, dim: int, cores: float) -> StageCost:
    data = rows * (4 * dim + 16)  # the first stage's workers import the pipeline's modules
    return _stage("ingest", c, c.stage_start_s + data / (c.parquet_bytes_per_s * cores),
                  f"read, validate, write {data / 2**30:.2f} GiB", cores, data)


def _peak(c: Constants, cluster: Cluster, memory: Sequence[NodeMemory]) -> int:
    """The whole cluster's peak: Ray's own processes, an idle worker per CPU and the stage's task, and what
    the actors hold."""
    base = c.ray_head_bytes + c.ray_node_bytes * (len(cluster.nodes) - 1)
    return base + (int(cluster.cpus) + 1) * c.worker_bytes + sum(m.need_bytes for m in memory)


def _budget(node: sizing.Node) -> int:
    return int(node.memory_bytes * (1 - HEADROOM))


def _spread(count: int, holders: int) -> list[int]:
    """`count` actors placed round-robin over `holders` nodes (Ray's SPREAD placement)."""
    return [count // holders + (1 if i < count % holders else 0) for i in range(holders)]


def _bound_problem(cluster: Cluster, actors: int, what: str) -> list[str]:
    mem = sum(n.memory_bytes for n in cluster.nodes)
    bound = actor_bound(cluster.cpus, mem)  # SHARDWALK_MAX_ACTORS applies, as in the run
    if actors > bound.limit:
        return [f"{actors} {what} exceed this cluster's actor bound {bound.limit} ({bound.reason})"]
    return []


# ----------------------------------------------------------------------------- index


def plan_index(job: IndexJob, cluster: Cluster, cal: Calibration) -> Plan:
    """Layout (shardwalk.core.plan.sizing.plan), memory per node and stage times of the index pipeline on `cluster`."""
    validate.positive(rows=job.rows, dim=job.dim)
    c = cal.constants
    try:
        layout = sizing.plan(cluster.nodes, job.rows, job.dim, job.M, shards=job.shards or None,
                             replicas=job.replicas, memory_fraction=job.memory_fraction)
    except ConfigError as exc:
        return _unfit_index(job, cluster, str(exc))
    holders = [i for i, n in enumerate(cluster.nodes) if n.cpus >= 1]
    actors = layout.shards * job.replicas
    per_node = _spread(actors, len(holders))
    shard_bytes = int(layout.bytes_per_shard * c.index_memory_ratio)
    staged = math.ceil(job.rows / layout.shards) * (4 * job.dim + 8)  # a primary keeps its raw rows while it builds
    priced = graph_stages(job, cluster, c, layout, max(per_node)) if job.knn_graph else {}
    method = pick_graph_method(job, run_prices(job, cluster, c, layout, max(per_node), priced)) if job.knn_graph else ""
    faster = pick_graph_method(job, priced) if job.knn_graph else ""
    job = replace(job, graph=replace(job.graph, method=method)) if job.knn_graph else job
    graph = c.worker_bytes + _graph_actor_bytes(job, len(holders)) if job.knn_graph and method != "hnsw" else 0
    # the build's shard actors are gone when the graph's actors start: a node holds the larger of the two
    memory = tuple(NodeMemory(i, a if job.hnsw else 1, max(a * (c.worker_bytes + shard_bytes + staged) if job.hnsw else 0,
                                                         graph), _budget(cluster.nodes[i]))
                   for i, a in zip(holders, per_node))
    stages = _index_stages(job, cluster, c, layout, max(per_node), priced.get(method))
    peak = _peak(c, cluster, memory)
    info = {"shards": layout.shards, "replicas": job.replicas, "actors": actors, "threads_per_actor": layout.threads,
            "cpus_per_actor": layout.cpus_per_actor, "index_bytes": layout.bytes_per_shard * layout.shards}
    notes = ()
    if job.knn_graph:
        info["graph_method"] = method
        info["graph_stage_seconds_by_method"] = {m: round(st.seconds, 3) for m, st in priced.items()}
        if faster != method:
            info["graph_method_fastest_sampled"] = faster
            notes = (f"knn_graph.method=auto runs {method} (the run prices the methods from the calibration); on the "
                     f"sample, {faster} is faster: set knn_graph.method={faster} to run it",)
    problems = _bound_problem(cluster, actors, "shard actors (shards × replicas)")
    return Plan("index", cluster, info, stages, memory, peak, tuple(problems), tuple(_index_advice(job, problems)),
                notes)


def _index_stages(job: IndexJob, cluster: Cluster, c: Constants, layout: sizing.ShardPlan,
                  actors_per_node: int, graph: StageCost | None) -> tuple[StageCost, ...]:
    cores = cluster.cpus
    hnsw = _hnsw_costs(job, cluster, c, layout, actors_per_node)
    data = job.rows * 4 * job.dim
    stages = [_start(c, cluster), _ingest(c, job.rows, job.dim, cores)]
    if job.hnsw:
        stages.append(hnsw["build"])
    if graph is not None:
        stages.append(graph)
    sample = min(job.recall_sample, job.rows)
    exact = 2.0 * sample * job.rows * job.dim / (c.blas_flops_per_s * cores)
    sweep = 6 * sample * hnsw["asked"] * hnsw["per_query"] * (128 / job.ef) / hnsw["speed"] if job.hnsw else 0.0
    stages.append(_stage("evaluate", c, c.actor_start_s + data / (c.parquet_bytes_per_s * cores) + exact + sweep,
                         f"exact search of {sample} samples over {job.rows:,} rows", cores))
    if job.hnsw:
        stages.append(_stage("report", c, c.report_s, "figures", 1))
    return tuple(stages)


def _graph_actor_bytes(job: IndexJob, actors: int) -> int:
    """What one graph actor holds (workers/knn_partition.py's formula): its rows and memberships, candidate
    lists, one block product."""
    exact = graph_method(job) == "exact"
    o = 1 if exact else job.graph.overlap
    held = o * job.rows / (1 if exact else actors)
    cell = job.rows if exact else min(job.rows, job.graph.partition_rows)
    return int(held * (4 * job.dim + 16 + 8 * o) + 2 * held * o * job.k * 12 + min(job.graph.block, cell) * cell * 4)


def graph_method(job: IndexJob) -> str:
    """The method a named `knn_graph.method` runs: partition is `exact` when one cell holds all (`auto` is
    decided by pick_graph_method on a cluster; without one it is partition, as here)."""
    if job.graph.method == "hnsw":
        return "hnsw"
    return "exact" if partitions_for(job.rows, job.graph) == 1 else "partition"


def graph_candidates(job: IndexJob) -> tuple[str, ...]:
    """The methods `auto` may pick: those expected to reach GRAPH_RECALL_TARGET (docs/design.md, "kNN graph
    without an index"): exact always; partition with overlap >= 2 (overlap 1 measured 0.86 at 100k); hnsw
    when the run builds the index anyway (`hnsw = true`) and searches with ef >= 2k (0.999 at ef 64, k 11)."""
    out = ["exact"]
    if job.graph.overlap >= 2 and partitions_for(job.rows, replace(job.graph, method="partition")) > 1:
        out.append("partition")
    if job.hnsw and job.ef >= 2 * job.k:
        out.append("hnsw")
    return tuple(out)


def graph_stages(job: IndexJob, cluster: Cluster, c: Constants, layout: sizing.ShardPlan, actors_per_node: int
                 ) -> dict[str, StageCost]:
    """The graph stage priced for the configured method, or for every `auto` candidate (hnsw: the queries
    only when the run builds the index anyway)."""
    methods = graph_candidates(job) if job.graph.method == "auto" else (graph_method(job),)
    out = {}
    for m in methods:
        if m == "hnsw":
            out[m] = _hnsw_costs(job, cluster, c, layout, actors_per_node)["knn_graph"]
        else:
            out[m] = _direct_graph(replace(job, graph=replace(job.graph, method=m)), cluster, c, m)
    return out


def run_prices(job: IndexJob, cluster: Cluster, c: Constants, layout: sizing.ShardPlan, actors_per_node: int,
               priced: dict[str, StageCost]) -> dict[str, StageCost]:
    """The prices a run's `auto` decides by: the calibration's (a run measures no sample: pipelines/index.py
    knn_graph_auto), so a plan with a sample predicts the method the run will run, priced from the sample."""
    if job.sample is None or job.graph.method != "auto":
        return priced
    return graph_stages(replace(job, sample=None), cluster, c, layout, actors_per_node)


def pick_graph_method(job: IndexJob, priced: dict[str, StageCost]) -> str:
    """`auto`: the candidate whose graph stage is priced lowest (ties: the earlier of exact, partition, hnsw);
    a named method: itself."""
    if job.graph.method != "auto":
        return next(iter(priced))
    return min(priced, key=lambda m: (priced[m].seconds, list(priced).index(m)))


def _hnsw_costs(job: IndexJob, cluster: Cluster, c: Constants, layout: sizing.ShardPlan,
                actors_per_node: int) -> dict:
    """The HNSW build stage and the graph through the index; from the sample's costs when there is one."""
    node_cpus = min(n.cpus for n in cluster.nodes if n.cpus >= 1)
    threads = min(layout.threads * actors_per_node, node_cpus)  # a node's actors share its CPUs
    speed = _threads_speedup(c, threads / actors_per_node) * actors_per_node  # cores' worth per node
    shard_rows = job.rows / layout.shards
    rows_per_node = shard_rows * actors_per_node  # replicas build their own copy
    if job.sample is not None:  # measured at the job's M, efC and ef on the data itself (sample_costs' laws,
        # the slope never below the machine's: the sample fits the caches the full index outgrows)
        slope = max(job.sample.build_log_growth, c.build_log_growth)
        per_insert = job.sample.build_s_per_row * build_growth(job.sample.rows, shard_rows, slope)
        per_query = job.sample.query_s_per_row * query_growth(job.sample.rows, shard_rows, c.query_log_growth)
    else:
        per_insert, per_query = calibrated_hnsw_s_per_row(job, c, shard_rows)
    data = job.rows * 4 * job.dim
    cores = cluster.cpus
    build = _stage("build", c, c.actor_start_s + data / (c.parquet_bytes_per_s * cores) + rows_per_node * per_insert / speed,
                   f"hnswlib inserts: {rows_per_node:,.0f} rows per node at {speed:.1f} cores", cores,
                   layout.bytes_per_shard * layout.shards)
    asked = min(job.nprobe, layout.shards) if job.nprobe else layout.shards
    # every point is asked of `asked` shards (all: broadcast); the owners merge and write
    answer = rows_per_node / job.replicas * asked * per_query / speed
    book = job.rows * c.graph_s_per_row / min(layout.shards, cores)
    graph = _stage("knn_graph", c, c.actor_start_s + answer + book, f"{job.rows:,} queries × {asked} shards", cores,
                   job.rows * (12 * job.k + 8))
    return {"build": build, "knn_graph": graph, "asked": asked, "per_query": per_query, "speed": speed}


def calibrated_hnsw_s_per_row(job: IndexJob, c: Constants, rows: float) -> tuple[float, float]:
    """(insert, query) seconds per row per core the calibration predicts for `job` on an index of `rows`."""
    build_scale = job.M * job.ef_construction / (c.ref_M * c.ref_ef_construction)
    return (_hnsw_s_per_row(c, rows, job.dim, build=True, scale=build_scale),
            _hnsw_s_per_row(c, rows, job.dim, build=False, scale=job.ef / c.ref_ef))


def graph_unit_costs(job: IndexJob, c: Constants) -> SampleCosts:
    """The partition and exact graphs' one-core unit costs: the sample's, else the calibration's at job.dim."""
    if job.sample is not None:
        return job.sample
    d, kk = float(job.dim), (job.k / c.ref_k) ** 2
    return SampleCosts("calibration", c.ref_rows, job.dim, 0.0, 0.0, c.local_s_per_pair_per_dim * d,
                       c.assign_s_per_row_cell_per_dim * d, c.train_s_per_unit_per_dim * d,
                       c.rest_s_per_row_per_dim * d * kk, c.exact_s_per_pair_per_dim * d, 0, 0.0, 0.0)


def _direct_graph(job: IndexJob, cluster: Cluster, c: Constants, method: str) -> StageCost:
    """The graph without an index (workers/knn_partition.py): one actor per node with CPUs, all its CPUs as
    threads; cell p on actor p mod A, so `exact` (one cell) runs on one actor."""
    holders = [n for n in cluster.nodes if n.cpus >= 1]
    actors = len(holders)
    speed = _threads_speedup(c, min(n.cpus for n in holders))
    # the local graphs run one cell per thread: they scale as measured for them, not as hnswlib's inserts
    local_speed = 1.0 + max(min(n.cpus for n in holders) - 1.0, 0.0) * c.graph_thread_efficiency
    costs = graph_unit_costs(job, c)
    cores = cluster.cpus
    read = job.rows * 4 * job.dim / (c.parquet_bytes_per_s * cores)
    write = job.rows * c.graph_s_per_row / actors
    if method == "exact":
        work = exact_seconds(costs, job.rows) / speed
        what = f"exact: {job.rows:,}² pairs on one actor at {speed:.1f} cores"
    else:
        steps = partition_seconds(costs, job.rows, job.graph)
        parts = partitions_for(job.rows, job.graph)
        work = steps["train"] + (steps["assign"] / speed + steps["local"] / local_speed + steps["rest"] / speed) / min(actors, parts)
        what = (f"partition: {parts:,} cells × overlap {job.graph.overlap}, {actors} actor(s) at {speed:.1f} cores"
                + (" (sampled costs)" if job.sample is not None else ""))
    # a graph actor imports numba and loads its kernels before the k-means can run (reading overlaps it only in part)
    return _stage("knn_graph", c, c.graph_actor_start_s + read + work + write, what, cores, job.rows * (12 * job.k + 8))


def method_seconds(job: IndexJob, cluster: Cluster, cal: Calibration) -> dict[str, float]:
    """Seconds from the ingested parts to the graph for each method (hnsw: its build included)."""
    out = {}
    for method in ("hnsw", "partition", "exact"):
        plan = plan_index(replace(job, knn_graph=True, hnsw=method == "hnsw",
                                  graph=replace(job.graph, method=method)), cluster, cal)
        out[method] = sum(s.seconds for s in plan.stages if s.name in ("build", "knn_graph"))
    return out


def _unfit_index(job: IndexJob, cluster: Cluster, why: str) -> Plan:
    """A plan for a layout shardwalk.core.plan.sizing refuses: no stages, the reason, and what would fit instead."""
    info = {"shards": job.shards or None, "replicas": job.replicas, "index_bytes": sizing.index_bytes(job.rows, job.dim, job.M)}
    return Plan("index", cluster, info, (), (), 0,
                (why,), tuple(_index_advice(job, [why])))


def _index_advice(job: IndexJob, problems: Sequence[str]) -> list[str]:
    """What to change when the index does not fit: fewer replicas, a smaller M (each costs 8 bytes a row)."""
    if not problems:
        return []
    advice = ["more nodes, or nodes with more memory"]
    if job.replicas > 1:
        advice.append(f"fewer replicas (replicas={job.replicas} holds {job.replicas} copies)")
    saved = 8 * (job.M - 8) / sizing.bytes_per_row(job.dim, job.M)
    if saved >= 0.1:  # links are 8·M bytes a row: worth it only when they weigh against the vector
        advice.append(f"smaller M (M=8 needs {saved:.0%} less memory, at some recall)")
    if job.shards:
        advice.append("shards=0 (sized to the cluster) or more shards")
    return advice


# ----------------------------------------------------------------------------- coreset scoring


def plan_coreset(job: ScoringJob, cluster: Cluster, cal: Calibration) -> Plan:
    """Scoring layout (shardwalk.core.coresets.proxy_spec.plan_scoring), memory and stage times of the coreset pipeline."""
    validate.positive(rows=job.rows, dim=job.dim)
    c = cal.constants
    train = max(1, int(job.rows * (1 - job.test_fraction)))
    mems = [n.memory_bytes for n in cluster.nodes if n.cpus > 0]  # as shardwalk.workers.scorer.actor_memory_bytes
    actor_mem = min(mems) / 4 if mems and min(mems) > 0 else 2e9
    layout = plan_scoring(train, job.dim, models=job.models, actors=job.shards, mode=job.layout,
                          actor_memory_bytes=actor_mem)
    holders = [i for i, n in enumerate(cluster.nodes) if n.cpus >= 1]
    per_node = _spread(layout.actors, len(holders))
    data = 8 * train * job.dim // (1 if layout.mode == "models" else layout.actors)
    memory = tuple(NodeMemory(i, a, a * (c.torch_worker_bytes + data), _budget(cluster.nodes[i]))
                   for i, a in zip(holders, per_node))
    stages = [_start(c, cluster), _ingest(c, job.rows, job.dim, cluster.cpus)]
    if job.knn is not None:
        knn = plan_index(replace(job.knn, rows=job.rows, dim=job.dim), cluster, cal).stages
        stages += [s for s in knn if s.name in ("build", "knn_graph")]
    stages.append(_score_stage(job, train, layout, cluster, c))
    selections = job.methods * job.rates  # per method: fresh shard actors; per selection: a few rounds of calls
    rounds = job.methods + job.tuning_rounds  # each round starts its own shard actors
    select = (rounds * c.torch_actor_start_s * math.ceil(job.shards / cluster.cpus)
              + selections * SELECT_ROUNDS * c.handoff_s * 2 + train * 8 * 4 / c.parquet_bytes_per_s)
    what = f"{selections} selections from per-shard summaries"
    if job.tuning_fits:  # β tuning: its validation models train here, not in `evaluate`
        select += _fits_seconds(job, job.tuning_fits, cluster, c)
        what += f"; β tuning: {job.tuning_fits} validation models × {job.evaluate_steps} steps"
    stages.append(_stage("select", c, select, what, min(cluster.cpus, max(job.tuning_fits, 1))))
    if job.evaluate_models:
        par = min(cluster.cpus, job.evaluate_models)
        stages.append(_stage("evaluate", c, _fits_seconds(job, job.evaluate_models, cluster, c),
                             f"{job.evaluate_models} fresh models × {job.evaluate_steps} steps", par))
    stages.append(_stage("report", c, c.report_s, "figures", 1))
    peak = _peak(c, cluster, memory)
    info = {"layout": layout.mode, "actors": layout.actors, "why": layout.reason, "training_rows": train}
    problems = _bound_problem(cluster, layout.actors, "scoring actors (shards)")
    advice = ["fewer shards, or more nodes"] if problems else []
    return Plan("coreset", cluster, info, tuple(stages), memory, peak, tuple(problems), tuple(advice))


def _fits_seconds(job: ScoringJob, fits: int, cluster: Cluster, c: Constants) -> float:
    """Fresh models trained with the evaluate settings, as tasks spread over the cluster's cores."""
    unit = job.dim * job.evaluate_hidden + job.evaluate_hidden * job.classes
    work = fits * job.evaluate_steps * job.evaluate_batch * unit * c.train_s_per_unit
    return c.torch_actor_start_s + c.torch_start_s + work / min(cluster.cpus, fits)


def _score_stage(job: ScoringJob, train: int, layout: object, cluster: Cluster, c: Constants) -> StageCost:
    """Proxies on actors: independent (busiest actor's proxies) or data-parallel (one all-reduce per batch)."""
    unit = job.dim * job.hidden + job.hidden * job.classes
    per_proxy = train * job.epochs * unit * c.train_s_per_unit
    actors = layout.actors
    crowding = max(1.0, actors / cluster.cpus)  # more actors than cores: they take turns
    if layout.mode == "models":
        seconds = math.ceil(job.models / actors) * per_proxy * crowding
        work = f"{math.ceil(job.models / actors)} proxies per actor on {actors} actors, no synchronisation"
    else:
        steps = job.epochs * math.ceil(train / job.batch_size)
        sync = steps * c.allreduce_s if actors > 1 else 0.0
        seconds = job.models * (per_proxy / actors * crowding + sync)
        work = f"{job.models} proxies data-parallel on {actors} actors, {steps:,} all-reduces each"
    starts = c.torch_actor_start_s * math.ceil(actors / cluster.cpus)  # actors beyond the cores start in turn
    return _stage("score", c, starts + c.torch_start_s + seconds, work, min(actors, cluster.cpus))


# ----------------------------------------------------------------------------- SRRW


def handoffs_per_hop(job: WalkJob) -> float:
    """Expected hand-offs per hop: the cut edges the walk crosses, halved by each halo ring (measured:
    22.3 / 11.8 / 7.7 / 5.3 per 1,000 hops at halo 0..3 on a 2,000-agent RGG, i.e. ≈ cut / (1 + halo));
    none when every actor holds every agent."""
    return 0.0 if job.partitions == 1 or job.replicate is True else job.cut_fraction / (1 + _halo(job))


BATCHED_HANDOFF_SHARE = 0.15  # actor seconds of a token's hand-off in a batched walk, as a share of one call's
#                               (handoff_s): 256 tokens on the sized RGG, 2 actors, nogil kernel: ≈ 100-200 µs a hand-off
#                               against a ≈ 1 ms call (benchmarks/results/srrw_rgg2000_256tokens_tokens3.json)


LINK_MESSAGE_SHARE = 0.5  # tokens a link message carries, as a share of the walk's tokens per actor (the outbox
#                           is sent when it holds this many: workers.walker.FLUSH_SHARE; measured 58 of 128)


def handoff_seconds(job: WalkJob, c: Constants) -> float:
    """Actor seconds one hand-off costs. Over direct links (`links`, the walker's default): the crossing's own
    CPU (`link_crossing_s`: packing, restoring its measure entries, the shorter kernel calls) and its share of a
    message (`link_message_s`), a message carrying LINK_MESSAGE_SHARE of each actor's tokens. As Ray calls: a
    call's (`handoff_s`) shared by the tokens a call carries (at best each actor's tokens, tokens / partitions),
    never below BATCHED_HANDOFF_SHARE of a call (measured)."""
    if job.links:
        return c.link_crossing_s + c.link_message_s / max(1.0, LINK_MESSAGE_SHARE * job.tokens / job.partitions)
    return c.handoff_s * max(BATCHED_HANDOFF_SHARE, min(1.0, job.partitions / max(job.tokens, 1)))


AUTO_HALO = 2  # the depth a plan assumes for halo = "auto" (the sized RGG's pilot picks 2-3)


def _halo(job: WalkJob) -> int:
    return AUTO_HALO if job.halo == "auto" else int(job.halo)


TOKEN_STREAM_WORDS = 6  # a resident token's PCG64 stream (shardwalk.core.srrw.token.RNG_WORDS; core.srrw imports core.plan)


def _walk_cost(job: WalkJob, cluster: Cluster, c: Constants) -> dict[str, float]:
    """One layout's (job.replicate True or False) hand-offs, seconds per hop, walk seconds and bytes per actor."""
    hop = c.hop_s + c.hop_s_per_feature * (job.rows / job.agents) * job.dim
    handoffs = handoffs_per_hop(job)
    per_hop = hop + (handoffs * handoff_seconds(job, c) if handoffs else 0.0)
    hops = job.tokens * job.steps
    par = min(job.partitions, job.tokens, cluster.cpus)
    walk = max(hops * per_hop / par, job.steps * per_hop)  # all hops spread, or one token's own path
    # own agents plus the halo's ghost copies, or all of them; a token's measure entries: all, or the actor's view
    held = 1.0 if job.replicate else min(1.0, (1 + 0.1 * _halo(job)) / job.partitions)
    view = 1.0 if job.replicate else min(1.0, (1 + 0.1 * (_halo(job) + 1)) / job.partitions)
    shared = shared_entries(job)
    baseline = shared if not job.replicate and job.partitions == 2 else 0  # MeasureShard.arrived: two actors only
    token = sizing.walk_token_bytes(int(view * job.agents), job.dim, TOKEN_STREAM_WORDS, baseline)
    actor = c.worker_bytes + int(8 * job.rows * job.dim * held) + job.tokens * token
    return {"handoffs_per_hop": handoffs, "seconds_per_hop": per_hop, "walk_seconds": c.walk_start_s + walk,
            "seconds_per_handoff": handoff_seconds(job, c) if handoffs else 0.0,
            "walking_at_once": par, "actor_bytes": actor, "token_bytes": token, "shared_entries": shared}


def shared_entries(job: WalkJob) -> int:
    """Visit-measure entries in two or more actors' views (they travel with a token): the views' overlap,
    each view its part plus ≈ 10 % of the agents per ring (halo + 1; measured: 792 of 2,000 on the sized RGG at
    halo 3, 0.4 predicted); none when replicated (a token carries its whole measure, kept by no other actor)."""
    if job.replicate is True or job.partitions == 1:
        return 0
    view = min(1.0, (1 + 0.1 * (_halo(job) + 1)) / job.partitions)
    return round(min(1.0, max(0.0, job.partitions * view - 1.0)) * job.agents)


def plan_srrw(job: WalkJob, cluster: Cluster, cal: Calibration) -> Plan:
    """Walker actors' memory and the walk's time from compute per hop, hand-offs per hop and their latency;
    both layouts are predicted (`layouts`), the one the walker would choose is the plan."""
    validate.positive(agents=job.agents, rows=job.rows, dim=job.dim)
    c = cal.constants
    fits = sizing.replicate_fits(sizing.walk_data_bytes(job.rows, job.dim), job.partitions, cluster.nodes)
    layouts = {name: _walk_cost(replace(job, replicate=flag), cluster, c)
               for name, flag in (("replicate", True), ("partitioned", False))}
    layouts["replicate"]["data_fits"] = fits
    if job.replicate == "auto":  # the walker's own rule, on the cluster planned on
        job = replace(job, replicate=fits)
    cost = layouts["replicate" if job.replicate else "partitioned"]
    hops = job.tokens * job.steps
    levels = math.ceil(math.log2(job.partitions)) if job.partitions > 1 else 0
    snapshots = job.tokens * max(1, job.steps // max(job.record_every, 1))
    stages = (
        _start(c, cluster),
        _ingest(c, job.rows, job.dim, cluster.cpus),
        _stage("agents", c, job.edges * c.graph_s_per_edge, f"graph of {job.edges:,} edges, placement", 1),
        _stage("partition", c, job.edges * c.partition_s_per_edge * levels, f"{levels} bisection levels", 1),
        _stage("walk", c, cost["walk_seconds"],
               f"{hops:,} hops, {cost['handoffs_per_hop'] * 1000:.1f} hand-offs per 1,000"
               f"{(' over direct links' if job.links else ' as Ray calls') if cost['handoffs_per_hop'] else ''}, "
               f"{cost['walking_at_once']:g} walking at once", cost["walking_at_once"],
               job.tokens * job.agents * 8 * max(1, job.steps // max(job.checkpoint_every, 1))),
        _stage("evaluate", c, 2.0 * snapshots * job.rows * job.dim / c.blas_flops_per_s, f"{snapshots:,} snapshots", 1),
        _stage("report", c, c.report_s, "figures", 1),
    )
    holders = [i for i, n in enumerate(cluster.nodes) if n.cpus >= 1]
    per_node = _spread(job.partitions, len(holders))
    actor = int(cost["actor_bytes"])
    memory = tuple(NodeMemory(i, a, a * actor, _budget(cluster.nodes[i])) for i, a in zip(holders, per_node))
    peak = _peak(c, cluster, memory)
    info = {"partitions": job.partitions, "replicate": job.replicate, "tokens": job.tokens, "hops": hops,
            "seconds_per_hop": cost["seconds_per_hop"],
            "handoffs_per_hop": cost["handoffs_per_hop"], "cut_fraction": job.cut_fraction, "layouts": layouts}
    problems = _bound_problem(cluster, job.partitions, "walker actors (partitions)")
    return Plan("srrw", cluster, info, stages, memory, peak, tuple(problems),
                ("fewer partitions, or more nodes",) if problems else ())


# ----------------------------------------------------------------------------- smallest cluster


PLANNERS = {IndexJob: plan_index, ScoringJob: plan_coreset, WalkJob: plan_srrw}


def plan_job(job: IndexJob | ScoringJob | WalkJob, cluster: Cluster, cal: Calibration) -> Plan:
    """The plan of any job description on `cluster`."""
    return replace(PLANNERS[type(job)](job, cluster, cal), job=job)


def smallest_cluster(job: IndexJob | ScoringJob | WalkJob, shape: NodeShape, cal: Calibration) -> Plan:
    """The plan on the fewest nodes of `shape` on which the job fits (ConfigError if none up to MAX_NODES)."""
    node = Cluster.of_shape(shape, 1, cal.constants.ray_memory_fraction).nodes[0]
    return fewest_nodes(job, node, cal, shape.name)


def fewest_nodes(job: IndexJob | ScoringJob | WalkJob, node: sizing.Node, cal: Calibration, shape: str = "") -> Plan:
    """The plan on the fewest copies of `node` on which the job fits (ConfigError if none up to MAX_NODES)."""
    def plan_on(count: int) -> Plan:
        return plan_job(job, Cluster((node,) * count, shape), cal)

    low, high = 1, 1
    while not plan_on(high).fits:
        low, high = high + 1, high * 2
        if high > MAX_NODES:
            raise ConfigError(f"the job fits on no cluster of up to {MAX_NODES} nodes of {node.cpus:g} CPUs and "
                              f"{node.memory_bytes / 2**30:.1f} GiB Ray memory ({shape or 'as given'})")
    while low < high:  # fits is monotone in the node count for these layouts: bisect
        mid = (low + high) // 2
        if plan_on(mid).fits:
            high = mid
        else:
            low = mid + 1
    return plan_on(low)
