"""`shardwalk plan`: how many nodes, how much memory and how long a job needs, before anything runs.

    shardwalk plan index --rows 100000000 --dim 768 --set ef=128 --node-shape r5.8xlarge
    shardwalk plan srrw --set tokens=16 --set graph.name=barabasi_albert --set graph.n=50000 --nodes 2
    shardwalk plan coreset --config example:coreset --nodes 3 --cpus-per-node 8 --memory-per-node 32GiB --json

The job is the pipeline's config (file, --set) with its data's size from --rows/--dim or the source's
Parquet footers; the model is `shardwalk.core.plan.cost_model` with constants from a calibration file. `check_fits` is the
refusal `shardwalk run` applies once connected, with the cluster Ray reports.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

from shardwalk.core import validate
from shardwalk.core.coresets.selection import CONFIRM_SEEDS, beta_candidates, tuning_plan, tuning_variants
from shardwalk.core.coresets.selection_names import parse_method
from shardwalk.core.data.builtin import is_builtin, parse_builtin
from shardwalk.core.errors import ConfigError, DataError, InputError
from shardwalk.core.index.graph_settings import GraphSettings
from shardwalk.core.plan import cost_model as cm
from shardwalk.core.plan.calibration import STANDARD_SHAPES, Calibration, NodeShape
from shardwalk.core.plan.sizing import GIB, Node

# rows, dim, classes of the built-in datasets (without loading them)
BUILTIN_SHAPES = {"digits": (1797, 64, 10), "breast_cancer": (569, 30, 2), "mnist5k": (5000, 784, 10)}
CUT_SAMPLE_AGENTS = 3000  # larger graphs: the cut fraction is measured on a same-family graph of this size
UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
         "g": GIB, "gb": 10**9, "gib": GIB, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}


def parse_bytes(text: str, where: str = "--memory-per-node") -> int:
    """'64GiB', '32g', '500MB', '1e9' → bytes; ConfigError naming `where` for anything else or ≤ 0."""
    match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    try:
        value = float(match.group(1)) * UNITS[unit] if match and unit in UNITS else None
    except ValueError:
        value = None
    if value is None:
        raise ConfigError(f"{where} must be a size such as 64GiB, 32GB or 500MiB, got {text!r}")
    if not value > 0:
        raise ConfigError(f"{where} must be > 0, got {text!r}")
    return int(value)


def known_shapes(cal: Calibration) -> dict[str, NodeShape]:
    """The calibration's node shapes plus the standard cloud shapes it does not redefine."""
    shapes = {n: NodeShape(n, c, m) for n, (c, m) in STANDARD_SHAPES.items()}
    return {**shapes, **cal.node_shapes}


def shape_named(cal: Calibration, name: str | None) -> NodeShape:
    """A node shape by name (the calibration's default when None); ConfigError naming an unknown one."""
    shapes = known_shapes(cal)
    key = name or cal.default_shape
    if key not in shapes:
        raise ConfigError(f"unknown node shape '{key}' (calibration {cal.source}); known: {', '.join(sorted(shapes))}")
    return shapes[key]


@dataclass(frozen=True)
class Sizes:
    """What the user says about the data instead of reading it (None: read from the source or the graph)."""

    rows: int | None = None
    dim: int | None = None
    classes: int | None = None
    agents: int | None = None
    edges: int | None = None
    cut_fraction: float | None = None


# ----------------------------------------------------------------------------- the data's size


def source_size(source: str, vector_column: str = "vector", label_column: str = "label") -> tuple[int, int | None, int | None]:
    """(rows, dim, classes) of a source from built-in metadata or Parquet footers (dim None: variable lists)."""
    if is_builtin(source):
        name, params = parse_builtin(source)
        if name == "mnist1d":
            return params.get("n", 5000), 40, 10
        if name == "synthetic":
            return params.get("n", 10000), params.get("d", 32), params.get("classes", 10)
        return BUILTIN_SHAPES[name]
    import pyarrow as pa
    import pyarrow.dataset as pads

    try:
        data = pads.dataset(source, format="parquet")
        rows = data.count_rows()
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise ConfigError(f"cannot read the size of source {source!r} ({exc}); give --rows and --dim") from None
    field = data.schema.field(vector_column) if vector_column in data.schema.names else None
    dim = field.type.list_size if field is not None and pa.types.is_fixed_size_list(field.type) else None
    return rows, dim, None


def _size(config: dict[str, Any], args: Sizes) -> tuple[int, int, int | None]:
    """Rows and dim from --rows/--dim, else from the config's source; validated > 0."""
    rows, dim, classes = args.rows, args.dim, None
    if rows is None or dim is None:
        found_rows, found_dim, classes = source_size(config["source"], config.get("vector_column", "vector"))
        rows = found_rows if rows is None else rows
        dim = found_dim if dim is None else dim
    if dim is None:
        raise ConfigError(f"source {config['source']!r} has variable-length vectors: give --dim")
    validate.positive(rows=rows, dim=dim)
    return rows, dim, classes


# ----------------------------------------------------------------------------- config → job


def job_of(pipeline: str, config: dict[str, Any], args: Sizes, *, cut: bool = True) -> cm.IndexJob | cm.ScoringJob | cm.WalkJob:
    """The cost model's description of the job a pipeline's config asks for (`cut`: partition the walk's
    graph to measure its cut fraction; only the time depends on it, not the memory)."""
    if pipeline not in ("index", "coreset", "srrw"):
        raise ConfigError(f"shardwalk plan knows the index, coreset and srrw pipelines, not {pipeline!r}")
    rows, dim, classes = _size(config, args)
    if pipeline == "index":
        keys = ("M", "ef_construction", "ef", "k", "shards", "replicas", "memory_fraction", "recall_sample", "nprobe")
        job = {k: config[k] for k in keys}
        graph = GraphSettings.from_config(config["knn_graph"])  # a table or a bool
        return cm.IndexJob(rows, dim, **job, knn_graph=graph.enabled, hnsw=config.get("hnsw", True), graph=graph)
    if pipeline == "coreset":
        return _scoring_job(config, rows, dim, args.classes or classes or 10)
    return _walk_job(config, rows, dim, args, cut)


def _scoring_job(config: dict[str, Any], rows: int, dim: int, classes: int) -> cm.ScoringJob:
    proxy, evaluate, knn = config["proxy"], config["evaluate"], config["knn"]
    methods, rates = len(config["select"]["methods"]), len(config["select"]["keep"])
    models = (methods * rates + 1) * evaluate.get("seeds", 1) if evaluate["enabled"] else 0
    tuning_fits = tuning_rounds = 0
    tuned, grid = tuning_plan(config["select"]["methods"], config["select"].get("beta", "auto"))
    if tuned:  # workers/beta_tuning.py, inside the select stage
        # each variant once: a ccs-SCORE-auto method tunes its plain and its class-balanced variant
        ccs = tuning_variants([parse_method(m) for m in tuned])
        randoms = len({m["class_balanced"] for m in ccs}) * rates  # the random candidates β must beat
        candidates = len(ccs) * sum(len(beta_candidates(float(r), grid)) for r in config["select"]["keep"])
        # one fit per candidate, then CONFIRM_SEEDS refits of each (variant, rate)'s best and of each random
        tuning_fits = candidates + randoms + CONFIRM_SEEDS * (len(ccs) * rates + randoms) if ccs else 0
        tuning_rounds = 1 + CONFIRM_SEEDS if ccs else 0
    knn_job = (cm.IndexJob(rows, dim, M=knn["M"], ef_construction=knn["ef_construction"], ef=knn["ef"], k=knn["k"])
               if knn["enabled"] else None)
    return cm.ScoringJob(rows, dim, classes=classes, shards=config["actors"], models=proxy["models"],
                         methods=methods, rates=rates,
                         epochs=proxy["epochs"], hidden=proxy["hidden"], batch_size=proxy["batch_size"],
                         layout=proxy.get("layout", "auto"), test_fraction=config["test_fraction"],
                         evaluate_models=models, tuning_fits=tuning_fits, tuning_rounds=tuning_rounds,
                         evaluate_steps=evaluate["steps"], evaluate_batch=evaluate["batch_size"],
                         evaluate_hidden=evaluate["hidden"], knn=knn_job)


def _walk_job(config: dict[str, Any], rows: int, dim: int, args: Sizes, measure_cut: bool) -> cm.WalkJob:
    agents, edges, cut = args.agents, args.edges, args.cut_fraction
    if agents is None or edges is None or cut is None:
        graph_agents, graph_edges, graph_cut = graph_size(config, measure_cut)
        agents = graph_agents if agents is None else agents
        edges = graph_edges if edges is None else edges
        cut = graph_cut if cut is None else cut
    validate.positive(agents=agents, edges=edges)
    if not 0 <= cut <= 1:
        raise ConfigError(f"--cut-fraction must be in [0, 1], got {cut}")
    keys = ("tokens", "steps", "partitions", "halo", "checkpoint_every", "record_every", "replicate")
    return cm.WalkJob(agents, edges, rows, dim, cut_fraction=cut, **{k: config[k] for k in keys})


def graph_size(config: dict[str, Any], measure_cut: bool = True) -> tuple[int, int, float]:
    """(agents, edges, cut-edge fraction of the configured partitioner) of the walk's graph.

    A graph of more than CUT_SAMPLE_AGENTS agents is generated (cheap) but partitioned at that size only:
    partitioning is the slow part, and the same generator's cut fraction changes little with size.
    """
    from shardwalk.core.srrw import SRRW, walk_partition
    from shardwalk.core.srrw.agents import build_graph, cut_edge_fraction, name_nodes, standard_graph
    from shardwalk.core.storage.sources import read_table
    from shardwalk.pipelines.srrw import _graph_params

    spec = config["graph"]
    if spec["name"] == "file":
        edges, _ = name_nodes(read_table(spec["edges"]), where=spec["edges"])  # as the agents stage numbers them
        graph = build_graph(edges, where=spec["edges"])
        sample = graph
    else:
        params = _graph_params(spec)
        graph = standard_graph(spec["name"], **params)
        sample = graph
        if graph.number_of_nodes() > CUT_SAMPLE_AGENTS and "n" in params:
            sample = standard_graph(spec["name"], **{**params, "n": CUT_SAMPLE_AGENTS})
    parts = config["partitions"]
    if parts == 1 or not measure_cut or sample.number_of_nodes() > 4 * CUT_SAMPLE_AGENTS:
        return graph.number_of_nodes(), graph.number_of_edges(), 0.0 if parts == 1 else 0.5
    owner = walk_partition(SRRW(sample, config["alpha"], config["base"]), sample, parts,
                           seed=config["seed"], method=config.get("partitioner", "metis"))
    return graph.number_of_nodes(), graph.number_of_edges(), cut_edge_fraction(sample, owner)


# ----------------------------------------------------------------------------- cluster → plan


def cluster_of(args: Any, cal: Calibration) -> cm.Cluster | None:
    """The cluster the user described (--nodes with a shape or --cpus-per-node/--memory-per-node), or None."""
    if args.nodes is None:
        if args.cpus_per_node is not None or args.memory_per_node is not None:
            raise ConfigError("--cpus-per-node / --memory-per-node describe a cluster: give --nodes too")
        return None
    if args.nodes < 1:
        raise ConfigError(f"--nodes must be >= 1, got {args.nodes}")
    shape = shape_named(cal, args.node_shape)
    cpus = shape.cpus if args.cpus_per_node is None else args.cpus_per_node
    if cpus < 1:
        raise ConfigError(f"--cpus-per-node must be >= 1, got {cpus}")
    memory = shape.memory_bytes if args.memory_per_node is None else parse_bytes(args.memory_per_node)
    named = args.node_shape if args.cpus_per_node is None and args.memory_per_node is None else "custom"
    custom = NodeShape(named or shape.name, cpus, memory)
    return cm.Cluster.of_shape(custom, args.nodes, cal.constants.ray_memory_fraction)


def make_plan(pipeline: str, config: dict[str, Any], args: Any, cal: Calibration) -> cm.Plan:
    """The plan on the given cluster, or on the smallest cluster of the node shape that fits; with a sample,
    priced with the sample's measured costs and carrying what was sampled in its notes."""
    sizes = Sizes(args.rows, args.dim, args.classes, args.agents, args.edges, args.cut_fraction)
    job = job_of(pipeline, config, sizes)
    job, notes = with_sample(job, config, getattr(args, "sample", None), getattr(args, "sample_rows", None), cal)
    cluster = cluster_of(args, cal)
    if cluster is None:
        plan = cm.smallest_cluster(job, shape_named(cal, args.node_shape), cal)
    else:
        plan = cm.plan_job(job, cluster, cal)
        plan = plan if plan.fits else replace(plan, advice=tuple(_node_count_advice(plan, job, cal)))
    if isinstance(job, cm.IndexJob) and job.knn_graph and plan.stages:
        plan = replace(plan, layout={**plan.layout, "graph_seconds_by_method": cm.method_seconds(job, plan.cluster, cal)})
    return replace(plan, notes=tuple(notes) + plan.notes)  # what was sampled first, then what follows from it


CONFIG_SOURCE = "config"  # `--sample` without a value: the config's source


def with_sample(job: Any, config: dict[str, Any], sample: str | None, rows: int | None, cal: Calibration
                ) -> tuple[Any, list[str]]:
    """`job` with per-row costs measured on a sample of `sample` (CONFIG_SOURCE: the config's source), and
    the plan's notes saying what was sampled, how long it took and how it compares with the calibration."""
    if sample is None:
        if rows is not None:
            raise ConfigError("--sample-rows needs --sample")
        return job, []
    index_job = job if isinstance(job, cm.IndexJob) else getattr(job, "knn", None)
    if index_job is None:
        raise ConfigError("--sample prices HNSW builds and kNN graphs: it applies to `plan index` and to "
                          "`plan coreset` with knn.enabled = true")
    from shardwalk.core.plan.sample_costs import SAMPLE_ROWS, measure

    source = str(config["source"]) if sample == CONFIG_SOURCE else sample
    costs = measure(source, k=index_job.k, M=index_job.M, ef_construction=index_job.ef_construction,
                    ef=index_job.ef, settings=index_job.graph, space=config.get("space", "l2"),
                    rows=SAMPLE_ROWS if rows is None else rows, vector_column=config.get("vector_column", "vector"))
    if costs.dim != index_job.dim:
        raise DataError(f"sample of {source}: vectors have dimension {costs.dim}, the job {index_job.dim} (--dim)")
    sampled = replace(index_job, sample=costs)
    job = sampled if isinstance(job, cm.IndexJob) else replace(job, knn=sampled)
    return job, sample_notes(costs, index_job, cal)


def sample_notes(costs: Any, job: cm.IndexJob, cal: Calibration) -> list[str]:
    """What the sample measured, against what the calibration would have assumed at the sample's size."""
    build, query = cm.calibrated_hnsw_s_per_row(replace(job, sample=None), cal.constants, costs.rows)
    local = cm.graph_unit_costs(replace(job, sample=None), cal.constants).local_s_per_pair
    return [f"sampled {costs.rows:,} rows of {costs.source} in {costs.seconds:.1f} s (read {costs.read_seconds:.1f} s); "
            "build and graph priced from them, one core, extrapolated by each method's growth law",
            f"sample costs per core: HNSW insert {costs.build_s_per_row * 1e6:.0f} µs/row "
            f"({costs.build_s_per_row / build:.2f}× the calibration's), query {costs.query_s_per_row * 1e6:.0f} µs/row "
            f"({costs.query_s_per_row / query:.2f}×), partition-graph pair {costs.local_s_per_pair * 1e9:.2f} ns "
            f"({costs.local_s_per_pair / local:.2f}×)"]


def check_fits(pipeline: str, config: dict[str, Any], nodes: list[Node], cal: Calibration) -> cm.Plan | None:
    """Refuse (ConfigError, exit 2) a job the plan says does not fit the connected cluster, saying what to
    change. None when the job's size cannot be known before it runs (e.g. a source that cannot be read)."""
    try:
        job = job_of(pipeline, config, Sizes(), cut=False)
    except (InputError, OSError):
        return None  # the stages report bad sources and graphs themselves, naming them
    plan = cm.plan_job(job, cm.Cluster(tuple(nodes)), cal)
    if plan.fits:
        return plan
    need = [m for m in plan.memory if not m.fits]
    what = "; ".join(plan.problems) or (f"node {need[0].node} needs {gib(need[0].need_bytes)} "
                                        f"but Ray lets it use {gib(need[0].budget_bytes)}")
    advice = _node_count_advice(plan, job, cal)
    raise ConfigError(f"pipeline '{pipeline}' does not fit this cluster of {len(nodes)} node(s): {what}; "
                      f"change: {', or '.join(advice)} (see `shardwalk plan {pipeline}`)")


def _node_count_advice(plan: cm.Plan, job: Any, cal: Calibration) -> list[str]:
    """The plan's advice, its 'more nodes' made concrete: how many nodes like the first one would fit."""
    advice = list(plan.advice) or ["more nodes"]
    holders = [n for n in plan.cluster.nodes if n.cpus >= 1]
    if holders and "more nodes" in advice[0]:
        try:
            enough = len(cm.fewest_nodes(job, holders[0], cal).cluster.nodes)
            advice[0] = f"{enough} nodes like these (or bigger ones)"
        except ConfigError:
            pass
    return advice


def plan_json(plan: cm.Plan, cal: Calibration) -> dict[str, Any]:
    """The plan as a JSON object for scripts."""
    return {
        "pipeline": plan.pipeline, "fits": plan.fits, "nodes": len(plan.cluster.nodes), "node_shape": plan.cluster.shape,
        "cluster": [asdict(n) for n in plan.cluster.nodes], "layout": plan.layout,
        "memory_per_node": [asdict(m) | {"fits": m.fits} for m in plan.memory], "peak_bytes": plan.peak_bytes,
        "stages": [asdict(s) for s in plan.stages], "seconds": plan.seconds,
        "bottleneck": plan.bottleneck.name if plan.stages else None, "problems": list(plan.problems),
        "advice": list(plan.advice), "notes": list(plan.notes), "headroom": cm.HEADROOM,
        "sample": _sample_of(plan),
        "calibration": {"file": cal.source, "machine": cal.machine.get("name")},
    }


def _sample_of(plan: cm.Plan) -> dict[str, Any] | None:
    job = plan.job if isinstance(plan.job, cm.IndexJob) else getattr(plan.job, "knn", None)
    return job.sample.as_json() if job is not None and job.sample is not None else None


def print_plan(plan: cm.Plan, cal: Calibration) -> None:
    """The plan as rich tables: layout, memory per node, stage times, the bottleneck and the verdict."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 110)
    shape = f" × {plan.cluster.shape}" if plan.cluster.shape else ""
    cpus, mem = plan.cluster.nodes[0].cpus, plan.cluster.nodes[0].memory_bytes
    console.print(f"[bold]{plan.pipeline}[/] on {len(plan.cluster.nodes)} node(s){shape} "
                  f"({cpus:g} CPUs, {gib(mem)} Ray memory each); calibration: {cal.machine.get('name')}")
    console.print("layout: " + ", ".join(f"{k}={_fmt(v)}" for k, v in plan.layout.items() if not isinstance(v, dict)))
    for note in plan.notes:
        console.print(f"[dim]{note}[/]")
    if plan.layout.get("layouts"):
        console.print(layouts_table(plan.layout))
    memory = Table("node", "actors", "needs", f"may use (Ray memory − {cm.HEADROOM:.0%})", "fits", title="memory per node")
    for m in plan.memory[:8]:
        memory.add_row(str(m.node), str(m.actors), gib(m.need_bytes), gib(m.budget_bytes),
                       "yes" if m.fits else "[red]no[/]")
    if len(plan.memory) > 8:
        memory.add_row("…", f"{len(plan.memory) - 8} more like these", "", "", "")
    if plan.memory:
        console.print(memory)
    stages = Table("stage", "predicted", "work", "cores", title="wall time")
    for s in plan.stages:
        stages.add_row(s.name, _duration(s.seconds), s.work, f"{s.cores:g}")
    if plan.stages:
        console.print(stages)
        console.print(f"total ≈ {_duration(plan.seconds)}; bottleneck: {plan.bottleneck.name}; "
                      f"peak memory of the whole cluster ≈ {gib(plan.peak_bytes)} (Ray's own processes included)")
    by_method = plan.layout.get("graph_seconds_by_method")
    if by_method:
        console.print("kNN graph by knn_graph.method (ingested parts → graph; hnsw includes its build): " + ", ".join(
            f"{m} {_duration(s)}" + (" (this job)" if m == plan.layout.get("graph_method") else "")
            for m, s in by_method.items()))
    candidates = plan.layout.get("graph_stage_seconds_by_method") or {}
    if len(candidates) > 1:  # knn_graph.method = auto: the candidates it chose from
        priced = ", ".join(f"{m} {_duration(s)}" for m, s in candidates.items())
        if "graph_method_fastest_sampled" in plan.layout:  # the run decides without the sample (see the notes)
            console.print(f"knn_graph.method = auto: the run picks from the calibration's prices → "
                          f"{plan.layout.get('graph_method')}; priced from the sample: {priced}")
        else:
            console.print("knn_graph.method = auto picks the fastest graph stage expected to reach recall 0.95 "
                          f"(hnsw: its queries only, when the index is built anyway): {priced} → {plan.layout.get('graph_method')}")
    verdict = "[green]fits[/]" if plan.fits else "[red]does not fit[/]: " + "; ".join(plan.problems)
    console.print(verdict)
    if plan.advice:
        console.print("change: " + ", or ".join(plan.advice))


def layouts_table(layout: dict[str, Any]) -> Any:
    """Both walker layouts side by side (the walk's seconds, hand-offs, a token's and an actor's bytes)."""
    from rich.table import Table

    table = Table("layout", "walk", "hand-offs / 1,000 hops", "actor µs per hand-off", "shared entries",
                  "bytes per token", "bytes per actor", "", title="walker layouts (shardwalk plan predicts both)")
    chosen = "replicate" if layout.get("replicate") is True else "partitioned"
    for name, cost in layout["layouts"].items():
        note = "chosen" if name == chosen else ""
        if name == "replicate" and not cost.get("data_fits", True):
            note = (note + ", " if note else "") + "a copy per actor does not fit"
        table.add_row(name, _duration(cost["walk_seconds"]), f"{1000 * cost['handoffs_per_hop']:.1f}",
                      f"{1e6 * cost.get('seconds_per_handoff', 0.0):.0f}", f"{cost.get('shared_entries', 0):,}", f"{cost.get('token_bytes', 0):,}",
                      gib(cost["actor_bytes"]), note)
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, int) and value > 10**6:
        return gib(value) if value > GIB else f"{value:,}"
    return str(value)


def gib(value: float) -> str:
    """Every byte figure the plan prints, in one format (core/plan/sizing.py's messages use the same)."""
    return f"{value / GIB:.2f} GiB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def run_plan(args: Any) -> int:
    """`shardwalk plan`: print the plan (or its JSON); exit 0 whether or not it fits (the verdict is printed)."""
    from shardwalk.core.plan.calibration import load
    from shardwalk.pipelines.config import load_config, pipeline_module

    cal = load(args.calibration)
    module = pipeline_module(args.pipeline)
    config = load_config(module, args.config, args.overrides)
    plan = make_plan(module.build(config).name, config, args, cal)
    if args.json:
        print(json.dumps(plan_json(plan, cal), indent=1))
    else:
        print_plan(plan, cal)
    return 0
