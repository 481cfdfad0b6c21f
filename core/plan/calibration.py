"""The measured constants the cost model (core/plan/cost_model.py) predicts with, and their sealed JSON file.

A calibration file is written by `python -m benchmarks.calibrate` on the machine it describes; it names that
machine and the node shapes a plan may be asked about, is schema-versioned, and carries the sha256 of its own
content (`shardwalk.core.storage.store.write_json_sealed`), so an edited or damaged file is refused rather than trusted.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardwalk.core.errors import ConfigError, CorruptArtifactError
from shardwalk.core.storage.store import read_json_sealed, write_json_sealed

SCHEMA = "shardwalk-calibration"
SCHEMA_VERSION = 3  # 2: walk_start_s; 3: driver_s
DEFAULT_FILE = Path(__file__).with_name("calibration.json")  # shipped with the package (measured here)
ENV = "SHARDWALK_CALIBRATION"  # a calibration file to use instead of the shipped one


@dataclass(frozen=True)
class NodeShape:
    """A machine type a cluster is made of: CPUs and physical memory (bytes)."""

    name: str
    cpus: int
    memory_bytes: int


@dataclass(frozen=True)
class Constants:
    """Throughputs, latencies and footprints measured on one machine (seconds, bytes, per single core)."""

    # hnswlib build: seconds per row per core = (base + per_dim * dim) * (M * efC) / (ref_M * ref_efC)
    #                                           * (1 + log_growth * ln(rows / ref_rows))
    build_s_per_row: float
    build_s_per_row_per_dim: float
    build_log_growth: float
    # hnswlib query (one point, k = ref_k): the same shape, scaled by ef / ref_ef
    query_s_per_row: float
    query_s_per_row_per_dim: float
    query_log_growth: float
    thread_efficiency: float  # hnswlib speed-up per thread relative to one (1 = perfect)
    index_memory_ratio: float  # measured index bytes / shardwalk.core.plan.sizing.index_bytes
    graph_s_per_row: float  # kNN graph bookkeeping per point: merge, drop self, write Parquet
    parquet_bytes_per_s: float  # read + validate + write Parquet, one core
    sha256_bytes_per_s: float  # commit manifests hash every output byte
    blas_flops_per_s: float  # float32 matmul, one core (exact recall ground truth)
    ray_start_s: float  # embedded Ray start, in the driver's process
    driver_s: float  # a run's seconds outside its stages with an embedded Ray (python, imports, Ray start + stop, records)
    stage_start_s: float  # a stage's first task on a fresh worker: imports, scheduling
    stage_overhead_s: float  # any later stage: a task on a warm worker, its commit
    report_s: float  # a report stage: matplotlib imported in a fresh worker, a figure rendered
    actor_start_s: float  # one actor ready to answer (process start + imports)
    torch_actor_start_s: float  # the same for an actor that imports torch (scoring, selection)
    worker_bytes: int  # PSS of one Ray worker process with shardwalk's libraries imported
    torch_worker_bytes: int  # the same with torch imported (scoring actors)
    ray_head_bytes: int  # idle PSS of a CLI driver and its embedded Ray head (GCS, raylet, agents), idle workers aside
    ray_node_bytes: int  # idle PSS of one more node (raylet and agents)
    ray_memory_fraction: float  # Ray's `memory` resource / physical memory of the node
    train_s_per_unit: float  # proxy training: seconds per (example × epoch × (dim·hidden + hidden·classes)), one core
    torch_start_s: float  # first proxy's fixed cost in an actor (torch warm-up)
    allreduce_s: float  # one gloo all-reduce between two actors (data-parallel layout)
    hop_s: float  # one SRRW hop in a walker's loop, excluding the gradient's data term
    hop_s_per_feature: float  # plus this × rows on the agent × dim
    handoff_s: float  # one actor-to-actor call carrying a token
    walk_start_s: float  # a walk's fixed cost: walker actors started (imports, numba cache load), first tokens back
    partition_s_per_edge: float  # Kernighan–Lin partitioning of the agent graph
    graph_s_per_edge: float  # generating the agent graph and placing the data on it
    # the kNN graph without an index (core/index/knn_partition.py), per dimension, one core CPU seconds;
    # measured by benchmarks.calibrate.measure_graph (sample_costs.measure_arrays) on 50k × 128 of its generated data
    # (2026-12-06, this machine); optional in the file, so calibration files written before them still load
    local_s_per_pair_per_dim: float = 6.58e-11  # a local graph's (row, cell row) pair: matmul, selection, rerank
    exact_s_per_pair_per_dim: float = 3.48e-11  # the exact graph's (row, row) pair
    assign_s_per_row_cell_per_dim: float = 1.59e-10  # a row's distance to one k-means cell
    train_s_per_unit_per_dim: float = 5.50e-9  # k-means: one training row against one cell (10 iterations)
    rest_s_per_row_per_dim: float = 8.59e-8  # merge + one refinement round per row, at ref_k neighbours
    # measured by benchmarks.calibrate (measure_graph_threads, measure_ray) on this machine, 2026-12-06 22:52-22:55
    # UTC, load 1.3-1.5 (medians of 2 and 3 runs); optional, as above
    graph_thread_efficiency: float = 0.72  # local graphs' speed-up per extra actor thread (one cell per thread): 0.65, 0.80
    graph_actor_start_s: float = 1.34  # a graph actor answering with its kernels loaded from numba's cache: 0.95-1.51 s
    # hand-offs over direct links (workers/peer_link.py), which partitioned walkers use instead of Ray calls
    # (`handoff_s`); optional, as above. link_message_s: both ends' CPU of one link message, its per-token part
    # aside (benchmarks.calibrate.measure_links, this machine, 2026-12-07 09:22 UTC under the exclusive lock, load
    # 2.7: 191 µs a 1-token message, 574 µs a 64-token one). link_crossing_s: the partitioned actors' CPU per token
    # crossing over the replicated walk's on the same hops, messages aside — (partitioned − replicated actor CPU −
    # messages × link_message_s) / crossings on the sized 256-token walk, 32M hops, 130,799 crossings: 33.6 / 34.2 /
    # 34.8 µs in three runs (benchmarks/results/srrw_rgg2000_levers_tokens12.json, "C" rounds; docs/throughput.md);
    # after tokens13's compiled copies (changed_only, the resident rows' moves) 29.3 / 31.6 / 38.6 µs in three runs
    # (srrw_rgg2000_256tokens_tokens13.json; the A/B windows, srrw_rgg2000_levers_tokens13.json: ~3 µs less): the median
    link_message_s: float = 1.85e-4
    link_crossing_s: float = 3.16e-5
    # The reference job the build and search constants were measured on (not defaults: a job with other
    # values is scaled from these; the index job's defaults live in core/index/spec.py).
    ref_rows: int = 20_000
    ref_M: int = 16
    ref_ef_construction: int = 200
    ref_ef: int = 64
    ref_k: int = 11


@dataclass(frozen=True)
class Calibration:
    """Constants plus where they came from: the machine, the node shapes known, the file they were read from."""

    constants: Constants
    machine: Mapping[str, Any]
    node_shapes: Mapping[str, NodeShape]
    default_shape: str
    source: str = ""


def to_json(cal: Calibration) -> dict[str, Any]:
    """The file's content (without the seal, which `save` adds)."""
    return {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "machine": dict(cal.machine),
        "default_node_shape": cal.default_shape,
        "node_shapes": {n: {"cpus": s.cpus, "memory_bytes": s.memory_bytes} for n, s in cal.node_shapes.items()},
        "constants": dataclasses.asdict(cal.constants),
    }


def save(cal: Calibration, path: str | os.PathLike) -> None:
    """Write the calibration sealed with the sha256 of its content."""
    write_json_sealed(path, to_json(cal))


def load(path: str | os.PathLike | None = None) -> Calibration:
    """The calibration at `path` ($SHARDWALK_CALIBRATION, else the shipped one), checksum and schema checked."""
    where = os.fspath(path or os.environ.get(ENV) or DEFAULT_FILE)
    if "://" not in where and not Path(where).is_file():
        raise ConfigError(f"calibration file {where} does not exist (write one with `python -m benchmarks.calibrate`)")
    hint = "; rerun `python -m benchmarks.calibrate --out FILE`"
    return from_json(read_json_sealed(where, "calibration file", hint), where)


def from_json(payload: Mapping[str, Any], where: str) -> Calibration:
    """Validate the schema; CorruptArtifactError naming the file and the first bad field."""
    def bad(what: str) -> CorruptArtifactError:
        return CorruptArtifactError(f"{where}: calibration file {what}")

    if payload.get("schema") != SCHEMA or payload.get("schema_version") != SCHEMA_VERSION:
        raise bad(f"has schema {payload.get('schema')!r} version {payload.get('schema_version')!r}; "
                  f"expected {SCHEMA!r} version {SCHEMA_VERSION}")
    consts = payload.get("constants")
    if not isinstance(consts, Mapping):
        raise bad("has no 'constants' object")
    fields = {f.name: f for f in dataclasses.fields(Constants)}
    unknown = sorted(set(consts) - set(fields))
    missing = sorted(n for n, f in fields.items() if n not in consts and f.default is dataclasses.MISSING)
    if unknown or missing:
        raise bad(f"constants: missing {missing or 'none'}, unknown {unknown or 'none'}")
    for name, value in consts.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise bad(f"constant '{name}' must be a finite number >= 0, got {value!r}")
    shapes = _shapes(payload.get("node_shapes"), bad)
    default = payload.get("default_node_shape")
    if default not in shapes:
        raise bad(f"default_node_shape {default!r} is not one of its node_shapes")
    machine = payload.get("machine")
    if not isinstance(machine, Mapping) or not machine.get("name"):
        raise bad("has no 'machine' object naming where it was measured")
    return Calibration(Constants(**consts), dict(machine), shapes, default, where)


def _shapes(raw: Any, bad: Any) -> dict[str, NodeShape]:
    if not isinstance(raw, Mapping) or not raw:
        raise bad("has no 'node_shapes'")
    shapes = {}
    for name, spec in raw.items():
        cpus = spec.get("cpus") if isinstance(spec, Mapping) else None
        mem = spec.get("memory_bytes") if isinstance(spec, Mapping) else None
        if not (isinstance(cpus, int) and cpus >= 1 and isinstance(mem, int) and mem > 0):
            raise bad(f"node shape '{name}' needs integer cpus >= 1 and memory_bytes > 0")
        shapes[name] = NodeShape(name, cpus, mem)
    return shapes


GIB = 1 << 30
# Common cloud machine types a plan can be asked about by name (CPUs as vCPUs, memory as sold).
STANDARD_SHAPES = {
    "m5.xlarge": (4, 16 * GIB), "m5.2xlarge": (8, 32 * GIB), "m5.4xlarge": (16, 64 * GIB),
    "m5.8xlarge": (32, 128 * GIB), "r5.2xlarge": (8, 64 * GIB), "r5.4xlarge": (16, 128 * GIB),
    "r5.8xlarge": (32, 256 * GIB), "c5.4xlarge": (16, 32 * GIB),
}
