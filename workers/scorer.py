"""ScoreShard actors and evaluation tasks: score a sharded dataset without gathering it, train on coresets.

Scoring has two layouts, chosen by shardwalk.core.coresets.proxy.plan_scoring from the data size and the actors:
- `models`: the proxies are independent, so each `ScoreShard` reads the whole training split and trains
  its own proxies (no synchronisation at all); every actor then receives all per-model contributions
  straight from the others' object refs and writes one slice of the scores table. Scores are added in
  model order, so 1, 2 or 3 actors give the same bits.
- `data`: every `ScoreShard` reads its own rows (shardwalk.core.storage.sources.read_shard), the proxies train data-parallel
  with gradients, example count and loss all-reduced in one gloo call per minibatch (rank 0 serves the
  rendezvous on its node's own address, workers/gloo.py), and each actor writes the scores of the examples it holds.
`device = "cuda"` makes every actor request one GPU (`num_gpus`); "auto" uses cuda when the cluster has GPUs.
Selection is workers/selector.py (no torch there: its actors start without importing it).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch

from shardwalk.core import progress
from shardwalk.core.coresets import proxy, scores
from shardwalk.core.coresets.evaluation import Split, evaluate_selection
from shardwalk.core.coresets.proxy import ProxySpec, TrainSpec
from shardwalk.core.coresets.scaling import FeatureSums, Scaling, fit_scaling
from shardwalk.core.data.schema import LABEL, validate_vectors, vector_dim
from shardwalk.core.errors import DataError, InvariantError
from shardwalk.core.storage import sink
from shardwalk.core.storage.labelled import labelled_arrays
from shardwalk.core.storage.sources import ShardSpec, plan_shards, read_shard
from shardwalk.workers import gloo
from shardwalk.workers.autoconnect import ensure_ray
from shardwalk.workers.progress_channel import wait_counted

PROBE_TIMEOUT_S = 30.0  # how long a rank may take to answer before it counts as alive but busy


def _actor_cpus(shards: int, num_cpus: float | None) -> float:
    """One CPU per actor, or an even share when there are more shards than CPUs."""
    if num_cpus is not None:
        return float(num_cpus)
    total = float(ray.cluster_resources().get("CPU", 1.0))
    return min(1.0, total / shards)


def actor_resources(actors: int, num_cpus: float | None, device: str) -> dict[str, float]:
    """Ray resources of one scoring or evaluation actor: a GPU each on cuda."""
    return {"num_cpus": _actor_cpus(actors, num_cpus), "num_gpus": 1.0 if device == "cuda" else 0.0}


def cluster_gpus() -> float:
    """GPUs the connected cluster offers (tests monkeypatch this)."""
    return float(ray.cluster_resources().get("GPU", 0.0))


def actor_memory_bytes() -> float:
    """What one scoring actor may hold: a quarter of the smallest node's Ray memory (2 GB if unknown)."""
    mems = [n["Resources"].get("memory", 0.0) for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU")]
    return min(mems) / 4 if mems and min(mems) > 0 else 2e9


@ray.remote
class ScoreShard:
    """Owns one shard: trains its slice of the data-parallel proxy and records its examples' dynamics."""

    def __init__(self, spec: ShardSpec, rank: int, world: int, *, split: Split, threads: int):
        torch.set_num_threads(threads)
        self.spec, self.rank, self.world, self.split = spec, rank, world, split
        self.scores: pa.Table | None = None
        self.params: np.ndarray | None = None
        self.store: Any = None  # rank 0: the gloo group's TCPStore server (workers/gloo.py)
        self.group: Any = None

    def _load(self) -> None:
        """Read and validate my rows; keep the training split (errors surface typed from a method call)."""
        spec = self.spec
        table = validate_vectors(read_shard(spec), where=f"shard {spec.index}", row_offset=spec.start)
        if LABEL not in table.column_names:
            raise DataError(f"shard {spec.index}: label-based scores (el2n, forgetting, aum) need a 'label' column")
        ids, x, y = labelled_arrays(table, where=f"shard {spec.index}")
        train = ~self.split.test_rows(ids)
        self.ids, self.x, self.y = ids[train], x[train], y[train]

    def summary(self) -> dict[str, Any]:
        """Rows and labels held here (small), for the global class count."""
        self._load()
        return {"rows": len(self.ids), "labels": np.unique(self.y).tolist(), "sums": FeatureSums.of(self.x)}

    def scale(self, scaling: Scaling) -> None:
        """Apply the scaling fitted on every actor's training rows to my rows (core/coresets/scaling.py)."""
        self.x = scaling(self.x)

    def ping(self) -> int:
        """Liveness probe that leaves my state alone (`summary` would re-read my rows over it)."""
        return self.rank

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0: serve the gloo group's store on this node's own address; returns (address, port)."""
        addr = ray.util.get_node_ip_address()
        if self.world == 1:  # no group, so nothing to listen for
            return addr, 0
        self.store = gloo.serve_store(addr, self.world)
        return addr, self.store.port

    def join(self, addr: str, port: int) -> None:
        """Join the gloo group (all ranks must call this concurrently); its sockets bind this node's address."""
        if self.world > 1:
            store = self.store if self.rank == 0 else gloo.join_store(addr, port, self.world)
            self.group = gloo.gloo_group(store, self.rank, self.world, ray.util.get_node_ip_address())

    @ray.method(num_returns=2)
    def score_models(self, num_classes: int, spec: ProxySpec, device: str, indices: list[int]) -> tuple[Any, dict[str, Any]]:
        """Train the independent proxies `indices` on all my rows: (per-model dynamics, timing)."""
        started, cpu = time.perf_counter(), time.process_time()
        recorder, model = proxy.score_shard(self.x, self.y, self.ids, num_classes, spec, total_rows=len(self.ids),
                                            model_indices=indices, device=device)
        self.params = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
        timing = {"rows": len(self.ids), "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}
        return recorder.model_parts(), timing

    def write_slice(self, out_dir: str, slice_index: int, slices: int, *parts: dict[int, Any]) -> dict[str, Any]:
        """Combine every actor's per-model dynamics (in model order) and put my slice of the scores (its entry)."""
        bounds = np.linspace(0, len(self.ids), slices + 1).astype(int)
        sel = slice(int(bounds[slice_index]), int(bounds[slice_index + 1]))
        merged = {m: part.rows(sel) for group in parts for m, part in group.items()}
        table = scores.combine_parts(self.ids[sel], self.y[sel], merged)
        return sink.put_parquet(table, out_dir, sink.PART.format(slice_index))

    def score(self, total_rows: int, num_classes: int, spec: ProxySpec, device: str) -> dict[str, Any]:
        """Train the proxies (all-reducing gradients) and record my examples' dynamics."""
        started, cpu = time.perf_counter(), time.process_time()
        allreduce = (lambda t: gloo.all_reduce(self.group, t)) if self.world > 1 else None
        recorder, model = proxy.score_shard(
            self.x, self.y, self.ids, num_classes, spec, total_rows=total_rows, allreduce=allreduce, device=device
        )
        self.scores = recorder.scores()
        self.params = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
        return {"rows": len(self.ids), "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}

    def write(self, out_dir: str) -> dict[str, Any]:
        """Put my part of the scores table (locally or straight into the stage's attempt); its manifest entry."""
        if self.scores is None:
            raise InvariantError("ScoreShard.write before score()")
        return sink.put_parquet(self.scores, out_dir, sink.PART.format(self.rank))

    def final_params(self) -> np.ndarray:
        """The last proxy's flattened parameters (tests compare layouts with them)."""
        if self.params is None:
            raise InvariantError("ScoreShard.final_params before score()")
        return self.params

    def leave(self) -> None:
        """Drop the gloo group and the store (their sockets close with them)."""
        self.group = self.store = None


def _get_fail_fast(refs: list[Any], actors: list[Any], tracker: progress.Tracker | None = None) -> list[Any]:
    """`ray.get(refs)` of one collective step, raising as soon as any rank fails.

    Plain `ray.get` waits for every ref, and when one rank dies mid-collective the others stay blocked in
    gloo until its timeout. A survivor's gloo error ("connection closed by peer") is a symptom: if a rank
    died, its RayActorError is raised instead, which the DAG runner retries.
    """
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(ready)
        except ray.exceptions.RayTaskError:
            _raise_if_a_rank_died(actors)
            raise
        if tracker is not None:
            tracker.advance(len(ready))
    return ray.get(refs)


def _raise_if_a_rank_died(actors: list[Any]) -> None:
    """Raise the RayActorError of a dead rank; a rank busy in the collective (no answer in time) is alive."""
    for actor in actors:
        try:
            ray.get(actor.ping.remote(), timeout=PROBE_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            continue  # alive, still blocked in the collective
        except ray.exceptions.RayActorError:
            raise


def _source_size(source: Any) -> tuple[int, int]:
    """(rows, dimension) of a source from its footers and one row (nothing else is read); a source without labels
    is refused here, before any actor starts."""
    whole = plan_shards(source, 1)[0]
    first = read_shard(ShardSpec(0, 0, 1, whole.uri, whole.files, whole.file_rows,
                                 whole.table.slice(0, 1) if whole.table is not None else None))
    where = str(source) if isinstance(source, str | Path) else "the source table"  # a Table's str is its contents
    return whole.num_rows, vector_dim(validate_vectors(first, where=where, require_label=True))


def score_dataset(
    source: Any,
    shards: int,
    out_dir: str | Path,
    *,
    spec: ProxySpec | None = None,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    num_cpus: float | None = None,
    threads: int = 1,
    return_params: bool = False,
    mode: str | None = None,
    device: str = "auto",
    memory_bytes: float | None = None,
    standardize: str | bool = "auto",
    **proxy_params: Any,
) -> dict[str, Any]:
    """Score every (training) example of `source` on up to `shards` actors; scores parts land in `out_dir`.

    `spec` holds the proxies' settings (or give its fields as keywords, e.g. `models=3`). `mode`
    (default `spec.layout`): "models" (independent proxies per actor), "data" (data-parallel) or "auto"
    (shardwalk.core.coresets.proxy.plan_scoring from the data size, `memory_bytes` per actor, the proxies and `shards`).
    `device`: auto | cpu | cuda. `standardize` (core/coresets/scaling.py) is fitted on the training rows of all actors.
    """
    spec = spec if spec is not None else ProxySpec(**proxy_params)
    ensure_ray()
    dev = proxy.resolve_device(device, cluster_gpus())
    rows, dim = _source_size(source)
    plan = proxy.plan_scoring(rows, dim, models=spec.models, actors=shards, mode=mode or spec.layout,
                              actor_memory_bytes=actor_memory_bytes() if memory_bytes is None else memory_bytes)
    readable = sink.readable(source) if isinstance(source, str | Path) else source  # actors on any node read it
    specs = plan_shards(readable, 1) * plan.actors if plan.mode == "models" else plan_shards(readable, plan.actors)
    world = 1 if plan.mode == "models" else len(specs)
    cls = ScoreShard.options(**actor_resources(len(specs), num_cpus, dev))
    split = Split(test_fraction, split_seed)
    actors = [cls.remote(s, i, world, split=split, threads=threads) for i, s in enumerate(specs)]
    try:
        result = _score(source, actors, plan, spec, dev, str(out_dir), standardize)
        if return_params:
            last = (spec.models - 1) % plan.actors if plan.mode == "models" else 0
            result["params"] = ray.get(actors[last].final_params.remote())
        return result
    finally:
        for a in actors:
            ray.kill(a)


def _score(source: Any, actors: list[Any], plan: proxy.ScoringPlan, spec: ProxySpec, device: str,
           out_dir: str, standardize: str | bool = "auto") -> dict[str, Any]:
    """Run one scoring on started actors; the metrics of `score_dataset`."""
    total, classes, sums = _global_labels(source, actors, plan.mode)
    scaling = fit_scaling(sums, standardize)
    if scaling.applied:
        ray.get([a.scale.remote(scaling) for a in actors])
    started = time.perf_counter()
    dest = sink.parts_destination(out_dir)
    if plan.mode == "models":
        per_actor, entries = _score_models(actors, plan, classes, spec, device, dest, total)
    else:
        per_actor, entries = _score_data(actors, total, classes, spec, device, dest)
    sink.record(entries)  # parts the actors put into the stage's attempt: listed in its manifest
    seconds = time.perf_counter() - started
    return {"rows": total, "classes": classes, "seconds": seconds, "parts": [loc for group in entries for loc in group],
            "mode": plan.mode, "actors": plan.actors, "device": device, "plan": plan.reason,
            "actor_cpu_seconds": [round(a["cpu_seconds"], 3) for a in per_actor],
            "examples_per_second": total * spec.models * spec.epochs / seconds, "standardized": scaling.applied,
            "scoring_epochs": spec.models * spec.epochs,
            "proxy_cpu_seconds": round(sum(a["cpu_seconds"] for a in per_actor), 3)}


def _global_labels(source: Any, actors: list[Any], mode: str) -> tuple[int, int, FeatureSums]:
    """(training rows, classes, feature sums) over all actors' rows; every actor loads its rows here."""
    summaries = ray.get([a.summary.remote() for a in actors])
    labels = sorted({lab for s in summaries for lab in s["labels"]})
    total = summaries[0]["rows"] if mode == "models" else sum(s["rows"] for s in summaries)
    sums = summaries[0]["sums"]  # models mode: every actor holds the whole training split
    if mode != "models":
        for s in summaries[1:]:  # in rank order, so the scaling is the same bits for the same layout
            sums = sums + s["sums"]
    if len(labels) < 2:
        raise DataError(f"{source}: label-based scores need at least 2 classes, found {labels}")
    if labels[0] < 0:
        raise DataError(f"{source}: labels must be >= 0, found {labels[0]}")
    return total, labels[-1] + 1, sums


def _score_models(actors: list[Any], plan: proxy.ScoringPlan, classes: int, spec: ProxySpec, device: str,
                  out_dir: str, rows: int = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Independent proxies: each actor trains its own, then each writes a slice from everyone's parts."""
    calls = [a.score_models.remote(classes, spec, device, list(idx)) for a, idx in zip(actors, plan.models_of)]
    parts, timings = [c[0] for c in calls], [c[1] for c in calls]
    per_actor = wait_counted(timings, "score", "train proxies", "actors", get=ray.get, rows_unit="examples",
                             rows=[len(idx) * spec.epochs * rows for idx in plan.models_of])
    paths = ray.get([a.write_slice.remote(out_dir, k, len(actors), *parts) for k, a in enumerate(actors)])
    return per_actor, paths


def _score_data(actors: list[Any], total: int, classes: int, spec: ProxySpec, device: str,
                out_dir: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Data-parallel proxies over the shards (gloo all-reduce); each actor writes its own examples."""
    addr, port = ray.get(actors[0].rendezvous.remote())
    _get_fail_fast([a.join.remote(addr, port) for a in actors], actors)
    tracker = progress.Tracker("train proxies (data-parallel)", len(actors), "ranks")
    per_actor = _get_fail_fast([a.score.remote(total, classes, spec, device) for a in actors], actors, tracker)
    paths = ray.get([a.write.remote(out_dir) for a in actors])
    ray.get([a.leave.remote() for a in actors])
    return per_actor, paths


@ray.remote(num_cpus=1, max_retries=1)
def evaluate_coreset(
    source: Any,
    selected: np.ndarray | str | None,
    split: Split,
    train: TrainSpec,
    *,
    threads: int = 1,
    rs2_keep: float | None = None,
    device: str = "cpu",
    test_source: Any = None,
    standardize: str | bool = "auto",
) -> dict[str, Any]:
    """shardwalk.core.coresets.evaluation.evaluate_selection as a task: it reads the source itself, so nothing passes through
    the driver. `device` is the resolved torch device (the caller requests `num_gpus=1` for "cuda")."""
    torch.set_num_threads(threads)
    cpu = time.process_time()
    result = evaluate_selection(source, selected, split, train, rs2_keep=rs2_keep, device=device,
                                test_source=test_source, standardize=standardize)
    return {**result, "cpu_seconds": time.process_time() - cpu}
