"""Coreset pipeline: ingest → (kNN graph → knn_density) → train proxies + score → select → evaluate.

    shardwalk run coreset --set source=builtin:mnist5k --set actors=2 --set select.keep=[0.3,0.1]

Methods are named `ccs-SCORE[-cb|-auto]`, `d2-SCORE[-cb]` (over the kNN graph), `topk-SCORE[-easy][-cb]` and
`random[-cb]` (`-cb` = class-balanced; `-auto` = plain or class-balanced, chosen per rate with β);
each (method, rate) becomes one selection table `select/<method…>-keep<rate>/part-*.parquet`, and
`evaluate` trains a fresh model on every coreset (and on the full training split) for the same
number of steps and reports the final test accuracy (on `test_source`, or the `test_fraction` held out of
`source`; the held-out ids are written to `evaluate/test_ids.parquet`). `keep` is a fraction of the
training rows, i.e. of `source` minus the held-out split; `select` reports that count as `training_rows`
and flags (metric `warning`) any coreset that holds no example of some class.

`standardize = "auto"` scales the features for the proxies and the evaluation models (fitted on the
training rows only, core/coresets/scaling.py); `select.beta = "auto"` chooses CCS's hard-cut fraction per rate on a
validation split (workers/beta_tuning.py), and for `ccs-SCORE-auto` the class balance with it (metric
`balance`); `evaluate.seeds` models per coreset give mean ± std, and a difference from random counts as significant by Welch's t-test (core/coresets/checks.py). Results that mean
nothing (a full-data model at the majority-class rate, diverged proxies, all methods tied) are `warning`s.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from shardwalk.core.coresets import checks as coreset_checks
from shardwalk.core.coresets import scores as score_fns
from shardwalk.core.coresets.evaluation import Split
from shardwalk.core.coresets.proxy_spec import ProxySpec, TrainSpec, resolve_device
from shardwalk.core.coresets.selection import tuning_plan
from shardwalk.core.coresets.selection_names import AUTO, method_selection_name, parse_method, read_selection
from shardwalk.core.coresets.spec import CoresetSpec
from shardwalk.core.dag.cache_key import InputPath
from shardwalk.core.dag.runner import Pipeline
from shardwalk.core.errors import DataError, InvariantError
from shardwalk.core.index.spec import DEFAULT_BUILD, DEFAULT_SEARCH
from shardwalk.core.storage import sink
from shardwalk.core.storage.files import read_manifest, write_parquet
from shardwalk.pipelines.common import COLUMN_DEFAULTS, LABELS_FILE, ingest_stage, read_label_map
from shardwalk.pipelines.reports.stage import coreset_report
from shardwalk.workers.ingest import part_paths
from shardwalk.workers.progress_channel import wait_counted
from shardwalk.workers.selector import SelectPools

DEFAULTS: dict[str, Any] = {
    "source": InputPath("builtin:digits"),
    **COLUMN_DEFAULTS,
    "actors": 2,  # scorer and selection actors; also the ingest parts and the kNN index's shards (one per actor)
    "test_source": InputPath(""),  # your own labelled test split (then test_fraction = 0); ids must not overlap `source`
    "test_fraction": 0.2,  # held out of `source` for evaluation; `keep` applies to the remaining training rows
    "split_seed": 0,
    "device": "auto",  # auto | cpu | cuda: where the proxies and evaluation models train (cuda: untested on real GPUs)
    "standardize": "auto",  # auto | true | false: features to mean 0 / variance 1 (fitted on training rows) for the models
    # the kNN graph's index: the index job's defaults, but a cheaper build (ef_construction 100, enough for density)
    "knn": {"enabled": False, "k": DEFAULT_SEARCH.k, "M": DEFAULT_BUILD.M, "ef_construction": 100, "ef": DEFAULT_SEARCH.ef},
    "proxy": dataclasses.asdict(ProxySpec()),  # its defaults live in ProxySpec (core/coresets/proxy_spec.py)
    "select": {"keep": [0.7, 0.5, 0.3, 0.1], "methods": ["ccs-el2n-auto", "ccs-aum-cb", "random", "topk-el2n"],
               "strata": 50, "seed": 0, "beta": "auto"},  # beta: "auto" (validation split) or a number in [0, 1)
    "evaluate": {"enabled": True, **dataclasses.asdict(TrainSpec())},
}


def validate(config: dict[str, Any]) -> None:
    """Reject bad values before any stage runs (the same checks the demo runs on its sections)."""
    CoresetSpec.from_config(config)
    if config["knn"]["enabled"]:
        from shardwalk.pipelines import index as index_pipeline

        index_pipeline.validate(knn_index_config(config))


def knn_index_config(config: dict[str, Any]) -> dict[str, Any]:
    """The index config of the `knn` section (the kNN graph that `knn_density` scores come from)."""
    from shardwalk.pipelines.index import index_section

    knn = config["knn"]
    return index_section({"shards": config["actors"], "M": knn["M"], "ef_construction": knn["ef_construction"],
                          "ef": knn["ef"], "k": knn["k"], "knn_graph": True})


# ----------------------------------------------------------------------------- stages


def score(out: Path, ingest: Path, *, actors: int, test_fraction: float, split_seed: int, proxy: dict,
          device: str = "auto", standardize: str | bool = "auto") -> dict[str, Any]:
    """Train the proxies on up to `actors` actors (independent proxies or data-parallel); scores parts."""
    from shardwalk.workers.scorer import score_dataset  # torch: only in the stages that start scorer actors

    result = score_dataset(str(ingest), actors, out, spec=ProxySpec.from_config(proxy), test_fraction=test_fraction,
                           split_seed=split_seed, device=device, standardize=standardize)
    keys = ("rows", "classes", "seconds", "examples_per_second", "mode", "actors", "device", "standardized",
            "scoring_epochs", "proxy_cpu_seconds")
    return {k: result[k] for k in keys}  # timings live in the manifest's metrics, never in the committed files


@ray.remote(num_cpus=1, max_retries=1)
def _density_part(graph_part: str, out_dir: str, name: str, k: int, test_fraction: float,
                  split_seed: int) -> tuple[int, dict[str, Any]]:
    """knn_density of one graph part, restricted to training rows, put beside the others (rows, its entry)."""
    table = score_fns.knn_density(pq.read_table(graph_part, page_checksum_verification=True), k=k)
    ids = table.column("id").to_numpy()
    train = ~Split(test_fraction, split_seed).test_rows(ids)
    return int(train.sum()), sink.put_parquet(table.filter(train), out_dir, name)


def density(out: Path, graph: Path, *, k: int, test_fraction: float, split_seed: int) -> dict[str, Any]:
    """The `knn_density` score (mean distance to the k nearest neighbours) from the kNN graph parts."""
    parts = sorted(p for p in graph.rglob("*.parquet"))
    written = wait_counted([  # tasks on any node read the parts from the store and put theirs into the attempt
        _density_part.remote(sink.readable(p), sink.destination(out), f"part-{i:05d}.parquet", k, test_fraction, split_seed)
        for i, p in enumerate(parts)
    ], "density", "density", get=ray.get)
    sink.record(entry for _, entry in written)
    return {"rows": sum(rows for rows, _ in written)}


def select(out: Path, scores: Path, density: Path | None = None, ingest: Path | None = None, graph: Path | None = None,
           *, actors: int,
           keep: list[float], methods: list[str], strata: int, seed: int, beta: str | float = "auto",
           tune: dict | None = None) -> dict[str, Any]:
    """Every (method, keep) selection, computed by shard actors from small per-shard summaries.

    `keep` is a fraction of the training rows (the scored ones); a coreset that loses a class is flagged.
    `beta = "auto"` picks each CCS method's β per rate on a validation split (`tune`: split, training
    settings, device, standardize), and a `ccs-SCORE-auto` method's class balance with it; the chosen β and
    balance (`selections.json`) and each method's cost (CPU-seconds: metrics only, never a committed file) are
    in the metrics too.
    """
    tuned, grid = tuning_plan(methods, beta)
    with SelectPools({"scores": scores, "density": density}, actors) as pools:  # one set of actors per table
        chosen = _tuned_betas(pools, ingest, keep, tuned, strata, seed, tune, grid) if tuned else {}
        result: dict[str, Any] = {}
        for name in methods:
            spec = parse_method(name)
            if spec["method"] == "d2":
                from shardwalk.workers.d2_select import select_d2

                if graph is None:
                    raise DataError(f"selection method '{name}' needs the kNN graph (knn.enabled = true)")
                result.update(select_d2(graph, scores, actors, [{**spec, "keep": float(r)} for r in keep], out, seed=seed))
                continue
            sels = [method_request(name, float(r), strata, beta, chosen) for r in keep]
            result.update(pools(_table_of(spec)).select([selection_request(sel) for sel in sels], out, seed=seed))
            for sel in sels:
                marks = {k: sel[k] for k in MARKS if k in sel}
                if marks:
                    result[sel["name"]].update(marks)
    cost = method_costs(scores, methods, keep, chosen)
    (out / "selections.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    metrics: dict[str, Any] = {name: info["rows"] for name, info in result.items()}
    metrics["beta"] = {name: info["beta"] for name, info in result.items() if "beta" in info}
    balance = {name: info["balance"] for name, info in result.items() if "balance" in info}
    if balance:  # the class balance β tuning chose for each `ccs-SCORE-auto` selection
        metrics["balance"] = balance
    fallback = {name: info["fallback"] for name, info in result.items() if "fallback" in info}
    if fallback:  # the tuned β did not beat random on every validation fit (workers/beta_tuning.py)
        metrics["fallback"] = fallback
    metrics["cost"] = cost  # CPU-seconds: in the metrics, not a file, so committed outputs stay byte-identical
    labelled = pads.dataset(str(scores), format="parquet").to_table()
    metrics["training_rows"] = labelled.num_rows
    dropped = dropped_classes(out, labelled, read_label_map(ingest) if ingest is not None else None, names=sorted(result))
    if dropped:
        metrics["dropped_classes"] = dropped
    missing = "coresets missing whole classes: " + "; ".join(f"{n} lacks {v}" for n, v in dropped.items()) if dropped else None
    columns = {c: labelled.column(c).to_numpy() for c in score_fns.DYNAMICS_SCORES if c in labelled.column_names}
    warning = coreset_checks.join_warnings(coreset_checks.scores_warning(columns), missing)
    if warning:
        metrics["warning"] = warning
    return metrics


def method_request(name: str, keep: float, strata: int, beta: str | float, chosen: dict[tuple[str, float], dict]
                   ) -> dict[str, Any]:
    """The selection request of method `name` at one rate: a CCS method's with its tuned β (and balance) where
    β tuning chose them, else with the fixed β."""
    spec = parse_method(name)
    if spec["method"] != "ccs":
        return {**spec, "keep": keep}
    verdict = chosen.get((name, keep))
    if verdict is None:
        return ccs_selection(name, keep, strata, float(beta))
    return ccs_selection(name, keep, strata, verdict["beta"], verdict.get("class_balanced"))


MARKS = ("fallback", "balance")  # what a selection request tells the metrics, not the selection protocol


def selection_request(sel: dict[str, Any]) -> dict[str, Any]:
    """A selection as the selection protocol takes it (without the `MARKS`)."""
    return {k: v for k, v in sel.items() if k not in MARKS}


def ccs_selection(name: str, keep: float, strata: int, beta: float | None,
                  class_balanced: bool | None = None) -> dict[str, Any]:
    """The selection request of CCS method `name` at one rate; β None (tuning found no β better than random)
    selects at random (class-balanced for `-cb`) under the CCS name, marked `fallback`. A `ccs-SCORE-auto`
    method takes the `class_balanced` its tuning chose, marked `balance` ("cb" or "plain")."""
    spec = parse_method(name)
    table = method_selection_name(name, keep)
    marks: dict[str, Any] = {}
    if spec["class_balanced"] == AUTO:
        if class_balanced is None:
            raise InvariantError(f"selection method '{name}' needs the class balance its β tuning chose")
        spec = {**spec, "class_balanced": bool(class_balanced)}
        marks["balance"] = "cb" if class_balanced else "plain"
    if beta is None:
        cb = spec["class_balanced"]
        return {"method": "random", "class_balanced": cb, "keep": keep, "name": table,
                "fallback": "random-cb" if cb else "random", **marks}
    return {**spec, "keep": keep, "strata": strata, "beta": beta, "name": table, **marks}


def _table_of(spec: dict[str, Any]) -> str:
    """The table a parsed method selects from: "density" (the knn_density scores) or "scores"."""
    return "density" if spec.get("score") == "knn_density" else "scores"


def _tuned_betas(pools: SelectPools, ingest: Path | None, rates: list[float], ccs: list[str], strata: int,
                 seed: int, tune: dict | None, grid: tuple[float, ...]) -> dict[tuple[str, float], dict]:
    """β (and a `-auto` method's balance) per (CCS method, rate), chosen on a validation split among `grid`
    (workers/beta_tuning.py), with the selection actors of `pools`."""
    from shardwalk.workers.beta_tuning import tune_betas
    from shardwalk.workers.scorer import cluster_gpus

    if ingest is None:
        raise DataError("select.beta = \"auto\" and ccs-SCORE-auto need the ingested data to validate on")
    tune = tune or {}
    split = Split(tune.get("test_fraction", 0.2), tune.get("split_seed", 0))
    train = TrainSpec(**tune.get("train", {}))
    device = resolve_device(tune.get("device", "auto"), cluster_gpus())
    out: dict[tuple[str, float], dict] = {}
    for table in ("scores", "density"):
        group = [n for n in ccs if _table_of(parse_method(n)) == table]
        if not group:
            continue
        tuned = tune_betas(pools(table), ingest, [parse_method(n) for n in group], rates, split=split, train=train,
                           seed=seed, strata=strata, device=device, standardize=tune.get("standardize", "auto"),
                           grid=grid)
        out.update({(group[m], r): v for (m, r), v in tuned.items()})
    return out


def method_costs(scores: Path, methods: list[str], rates: list[float], tuned: dict[tuple[str, float], dict]) -> dict:
    """Per method: the scoring epochs and proxy CPU-seconds its scores cost, and its β tuning's CPU-seconds."""
    scoring = read_manifest(scores).get("metrics", {})  # the score stage's figures, from its commit
    out = {}
    for name in methods:
        spec = parse_method(name)
        dynamics = spec.get("score") in score_fns.DYNAMICS_SCORES
        out[name] = {"scoring_epochs": scoring.get("scoring_epochs", 0) if dynamics else 0,
                     "proxy_cpu_seconds": scoring.get("proxy_cpu_seconds", 0.0) if dynamics else 0.0,
                     "beta_tuning_cpu_seconds": round(sum(tuned[(name, float(r))]["cpu_seconds"]
                                                          for r in rates if (name, float(r)) in tuned), 3)}
    return out


def dropped_classes(select_dir: Path, labelled: pa.Table, values: np.ndarray | None,
                    names: list[str] | None = None) -> dict[str, list[int]]:
    """Per selection, the classes (the user's label values) of the training rows that it holds none of."""
    ids, labels = labelled.column("id").to_numpy(), labelled.column("label").to_numpy()
    present = np.unique(labels)
    dropped = {}
    names = names if names is not None else sorted(p.name for p in select_dir.iterdir() if p.is_dir())
    for name in names:  # the parts may be in the stage's attempt on a store (core/storage/sink.py)
        kept = np.unique(labels[np.isin(ids, read_selection(sink.destination(select_dir / name)))])
        missing = np.setdiff1d(present, kept)
        if missing.size:
            dropped[name] = [int(v) for v in (values[missing] if values is not None else missing)]
    return dropped


def held_out_split(out: Path, ingest: Path, ingest_test: Path, *, source: str, test_source: str) -> dict[str, Any]:
    """The user's test split with labels encoded like the training data's; ids must not overlap `source`."""
    train_ids = pads.dataset(str(ingest), format="parquet").to_table(columns=["id"]).column("id").to_numpy()
    classes, test_classes = read_label_map(ingest), read_label_map(ingest_test)
    rows = 0
    for path in part_paths(ingest_test):
        table = pq.read_table(path)
        ids = table.column("id").to_numpy()
        overlap = np.flatnonzero(np.isin(ids, train_ids))
        if overlap.size:
            raise DataError(f"{test_source}: column 'id' has value {int(ids[overlap[0]])}, which is also in source {source}; the splits must not overlap")
        values = test_classes[table.column("label").to_numpy()]
        unknown = ~np.isin(values, classes)
        if unknown.any():
            raise DataError(f"{test_source}: column 'label' has value {int(values[unknown][0])}, which does not occur in source {source}")
        table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(np.searchsorted(classes, values)))
        write_parquet(table, out / path.name)
        rows += table.num_rows
    shutil.copy2(ingest / LABELS_FILE, out / LABELS_FILE)
    return {"rows": rows}


def evaluate(out: Path, ingest: Path, select: Path, test: Path | None = None, *, test_fraction: float,
             split_seed: int, steps: int, batch_size: int, lr: float, hidden: int, seed: int, model: str,
             seeds: int = 1, device: str = "auto", standardize: str | bool = "auto") -> dict[str, Any]:
    """Train `seeds` fresh models on each coreset and on the full training split (all tasks at once);
    test accuracy mean ± std of each, compared with random by Welch's t-test (core/coresets/checks.py).

    The held-out ids (and the user's labels) go to test_ids.parquet: the rows every accuracy is measured on.
    accuracy.json holds the means; accuracy_seeds.json every seed, the spread and the comparison.
    """
    from shardwalk.workers.scorer import cluster_gpus, evaluate_coreset

    names = sorted(p.name for p in select.iterdir() if p.is_dir())
    dev = resolve_device(device, cluster_gpus())
    split = Split(test_fraction, split_seed)
    trains = [TrainSpec(steps=steps, batch_size=batch_size, lr=lr, hidden=hidden, seed=seed + s, model=model, seeds=seeds)
              for s in range(seeds)]
    write_parquet(_test_ids(ingest, test, split), out / "test_ids.parquet")
    task = evaluate_coreset.options(num_gpus=1 if dev == "cuda" else 0)
    common = {"device": dev, "test_source": sink.readable(test) if test is not None else None, "standardize": standardize}
    data = sink.readable(ingest)  # tasks on any node read the store objects behind the node-local copies
    jobs = [(n, t) for n in [*names, "full"] for t in trains]
    refs = [task.remote(data, None if n == "full" else sink.readable(select / n), split, t, **common) for n, t in jobs]
    answers = wait_counted(refs, "evaluate coresets", "train models", "models", get=ray.get)
    per_seed: dict[str, list[float]] = {}
    for (n, _), a in zip(jobs, answers):
        per_seed.setdefault(n, []).append(a["accuracy"])
    verdict = coreset_checks.summarise(per_seed, answers[-1]["majority"])
    accuracy = {n: e["mean"] for n, e in verdict["accuracy"].items()}
    (out / "accuracy.json").write_text(json.dumps(accuracy, indent=1, sort_keys=True))
    (out / "accuracy_seeds.json").write_text(json.dumps(verdict, indent=1, sort_keys=True))
    metrics: dict[str, Any] = {k: round(v, 4) for k, v in accuracy.items()}
    metrics["std"] = {n: round(e["std"], 4) for n, e in verdict["accuracy"].items()}
    metrics["seeds"] = seeds
    metrics["standardized"] = bool(answers[-1]["standardized"])
    metrics["majority_rate"] = round(verdict["majority"], 4)
    metrics["beats_random"] = {n: round(e["difference"], 4) for n, e in verdict["accuracy"].items()
                               if e.get("significant") and e["difference"] > 0}
    if verdict["warning"]:
        metrics["warning"] = verdict["warning"]
    return metrics


def _test_ids(ingest: Path, test: Path | None, split: Split) -> pa.Table:
    """(id, label) of the rows every accuracy is measured on, with the user's label values."""
    held = pads.dataset(str(test or ingest), format="parquet").to_table(columns=["id", "label"])
    if test is None:
        held = held.filter(pa.array(split.test_rows(held.column("id").to_numpy())))
    values = read_label_map(ingest)
    if values is not None:
        held = held.set_column(1, "label", pa.array(values[held.column("label").to_numpy()]))
    return held.sort_by("id")


def add_coreset_stages(p: Pipeline, config: dict[str, Any], *, graph: str | None = None) -> None:
    """Add [build → knn_graph →] density, score, select and evaluate from a validated coreset config.

    `graph` names a kNN-graph stage already in `p` (the demo's); otherwise `knn.enabled` adds the index
    stages here. Expects an `ingest` stage; adds no report.
    """
    spec = CoresetSpec.from_config(config)
    split = {"test_fraction": spec.split.test_fraction, "split_seed": spec.split.split_seed}
    select_inputs = {"scores": "score", "ingest": "ingest"}
    if spec.knn:
        if graph is None:
            from shardwalk.pipelines.index import add_index_stages

            add_index_stages(p, knn_index_config(config))
            graph = "knn_graph"
        p.stage("density", density, inputs={"graph": graph}, params={"k": config["knn"]["k"], **split}, num_cpus=0)
        select_inputs["density"] = "density"
        if any(m["method"] == "d2" for m in spec.select.parsed()):
            select_inputs["graph"] = graph
    p.stage("score", score, inputs=["ingest"], num_cpus=0, version="2",
            params={"actors": spec.actors, **split, "device": spec.device, "proxy": dataclasses.asdict(spec.proxy),
                    "standardize": spec.standardize})
    sel = spec.select
    train = dataclasses.asdict(spec.training)
    tune = {**split, "train": {k: v for k, v in train.items() if k != "seeds"}, "device": spec.device,
            "standardize": spec.standardize}
    p.stage("select", select, inputs=select_inputs, version="5", num_cpus=0, params={
        "actors": spec.actors, "keep": list(sel.keep), "methods": list(sel.methods), "strata": sel.strata,
        "seed": sel.seed, "beta": sel.beta, **({"tune": tune} if tuning_plan(sel.methods, sel.beta)[0] else {})})
    if spec.evaluate is not None:
        inputs = {"ingest": "ingest", "select": "select"}
        if spec.test_source:
            ingest_stage(p, {**config, "source": spec.test_source, "shards": spec.actors}, require_label=True,
                         name="ingest_test")
            p.stage("test_split", held_out_split, inputs={"ingest": "ingest", "ingest_test": "ingest_test"}, num_cpus=0,
                    params={"source": str(config["source"]), "test_source": spec.test_source})
            inputs["test"] = "test_split"
        p.stage("evaluate", evaluate, inputs=inputs, version="3", num_cpus=0,
                params={**split, **dataclasses.asdict(spec.evaluate), "device": spec.device,
                        "standardize": spec.standardize})


def build(config: dict[str, Any]) -> Pipeline:
    """ingest → [build → knn_graph → density] → score → select → evaluate → report."""
    p = Pipeline("coreset")
    ingest_stage(p, {**config, "shards": config["actors"]}, require_label=True)  # one part per actor
    add_coreset_stages(p, config)
    report_inputs = {"ingest": "ingest", "scores": "score", "select": "select"}
    if config["evaluate"]["enabled"]:
        report_inputs["evaluate"] = "evaluate"
    p.stage("report", coreset_report, inputs=report_inputs, num_cpus=0)
    return p


def summary(accuracy_json: Path) -> dict[str, float]:
    """Read an evaluate stage's accuracy table (for scripts and tests)."""
    return {k: float(v) for k, v in json.loads(Path(accuracy_json).read_text()).items()}
