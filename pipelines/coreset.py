"""Coreset pipeline: ingest → (kNN graph → knn_density) → train proxies + score → select → evaluate.

    shardwalk run coreset --set source=builtin:mnist5k --set shards=2 --set select.rates=[0.3,0.1]

Methods are named `ccs-SCORE[-cb]`, `topk-SCORE[-easy][-cb]` and `random[-cb]` (`-cb` = class-balanced);
each (method, rate) becomes one selection table `select/<method…>-keep<rate>/part-*.parquet`, and
`evaluate` trains a fresh model on every coreset (and on the full training split) for the same
number of steps and reports the final test accuracy (on `test_source`, or the `test_fraction` held out of
`source`; the held-out ids are written to `evaluate/test_ids.parquet`). `keep` is a fraction of the
training rows, i.e. of `source` minus the held-out split; `select` reports that count as `training_rows`
and flags (metric `warning`) any coreset that holds no example of some class.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray

from core import scores as score_fns
from core import sink
from core.coreset import METHODS
from core.dag import Pipeline
from core.datasets import test_mask
from core.errors import ConfigError, DataError
from core.io import write_parquet
from core.proxy import MODES, check_device, resolve_device
from pipelines.common import COLUMN_DEFAULTS, LABELS_FILE, ingest_stage, read_label_map
from pipelines.reports import coreset_report
from workers.ingest import part_paths
from workers.scorer import cluster_gpus, evaluate_coreset, read_selection, score_dataset, select_distributed

DEFAULTS: dict[str, Any] = {
    "source": "builtin:digits",
    **COLUMN_DEFAULTS,
    "shards": 2,
    "test_source": "",  # your own labelled test split (then test_fraction = 0); ids must not overlap `source`
    "test_fraction": 0.2,  # held out of `source` for evaluation; `keep` applies to the remaining training rows
    "split_seed": 0,
    "device": "auto",  # auto | cpu | cuda: where the proxies and evaluation models train (cuda: untested on real GPUs)
    "knn": {"enabled": False, "k": 10, "M": 16, "ef_construction": 100, "ef": 64},
    "proxy": {"model": "mlp", "hidden": 128, "models": 2, "epochs": 8, "batch_size": 256, "lr": 0.05,
              "el2n_epoch": 2, "seed": 0, "layout": "auto"},
    "select": {"rates": [0.7, 0.5, 0.3, 0.1], "methods": ["ccs-aum-cb", "ccs-el2n-cb", "random", "topk-el2n"],
               "strata": 50, "seed": 0},
    "evaluate": {"enabled": True, "steps": 600, "batch_size": 128, "lr": 0.05, "hidden": 128, "seed": 0},
}


def parse_method(name: str) -> dict[str, Any]:
    """`ccs-aum-cb` → {method: ccs, score: aum, class_balanced: True}; ConfigError on unknown parts."""
    parts = str(name).split("-")
    method, rest = parts[0], parts[1:]
    if method not in METHODS:
        raise ConfigError(f"unknown selection method '{name}'; use ccs-SCORE[-cb], topk-SCORE[-easy][-cb], random[-cb]")
    out: dict[str, Any] = {"method": method, "class_balanced": "cb" in rest}
    rest = [r for r in rest if r != "cb"]
    if method == "topk" and "easy" in rest:
        out["hardest"] = False
        rest = [r for r in rest if r != "easy"]
    if method == "random":
        if rest:
            raise ConfigError(f"selection method '{name}': random takes no score")
        return out
    if len(rest) != 1 or rest[0] not in score_fns.HARD_HIGH:
        raise ConfigError(f"selection method '{name}': name one score from {sorted(score_fns.HARD_HIGH)}")
    out["score"] = rest[0]
    return out


def validate(config: dict[str, Any]) -> None:
    """Reject bad values before any stage runs."""
    if not 1 <= config["shards"] <= 1024:
        raise ConfigError(f"shards must be in [1, 1024], got {config['shards']}")
    if not 0.0 <= config["test_fraction"] < 1.0:
        raise ConfigError(f"test_fraction must be in [0, 1), got {config['test_fraction']}")
    if config.get("test_source") and config["test_fraction"] > 0:
        raise ConfigError("test_source is the test split: set test_fraction = 0 with it")
    if config["test_fraction"] == 0 and not config.get("test_source") and config["evaluate"]["enabled"]:
        raise ConfigError("test_fraction = 0 leaves nothing to test on: set test_source, or evaluate.enabled = false")
    rates = config["select"]["rates"]
    if not rates or any(not isinstance(r, int | float) or not 0.0 < r < 1.0 for r in rates):
        raise ConfigError(f"select.rates must be a non-empty list of keep fractions in (0, 1), got {rates}")
    methods = [parse_method(m) for m in config["select"]["methods"]]
    if any(m.get("score") == "knn_density" for m in methods) and not config["knn"]["enabled"]:
        raise ConfigError("score 'knn_density' needs knn.enabled = true")
    if any(m.get("score") == "knn_density" and m["class_balanced"] for m in methods):
        raise ConfigError("knn_density selections cannot be class-balanced (the kNN scores carry no labels)")
    proxy = config["proxy"]
    for key in ("hidden", "models", "epochs", "batch_size"):
        if proxy[key] < 1:
            raise ConfigError(f"proxy.{key} must be >= 1, got {proxy[key]}")
    if proxy.get("layout", "auto") not in MODES:
        raise ConfigError(f"proxy.layout must be one of {list(MODES)}, got {proxy['layout']!r}")
    check_device(config.get("device", "auto"))
    if proxy["model"] not in ("mlp", "linear", "cnn"):
        raise ConfigError(f"proxy.model must be mlp, linear or cnn, got {proxy['model']!r}")
    if config["evaluate"]["steps"] < 1:
        raise ConfigError(f"evaluate.steps must be >= 1, got {config['evaluate']['steps']}")


# ----------------------------------------------------------------------------- stages


def score(out: Path, ingest: Path, *, shards: int, test_fraction: float, split_seed: int, proxy: dict,
          device: str = "auto") -> dict[str, Any]:
    """Train the proxies on up to `shards` actors (independent proxies or data-parallel); scores parts."""
    params = {k: v for k, v in proxy.items() if k not in ("model", "layout")}
    result = score_dataset(str(ingest), shards, out, test_fraction=test_fraction, split_seed=split_seed,
                           kind=proxy["model"], mode=proxy.get("layout", "auto"), device=device, **params)
    return {k: result[k] for k in ("rows", "classes", "seconds", "examples_per_second", "mode", "actors", "device")}


@ray.remote(num_cpus=1, max_retries=1)
def _density_part(graph_part: str, out_dir: str, name: str, k: int, test_fraction: float,
                  split_seed: int) -> tuple[int, dict[str, Any]]:
    """knn_density of one graph part, restricted to training rows, put beside the others (rows, its entry)."""
    table = score_fns.knn_density(pq.read_table(graph_part, page_checksum_verification=True), k=k)
    ids = table.column("id").to_numpy()
    train = ~test_mask(ids, test_fraction, split_seed) if test_fraction > 0 else np.ones(len(ids), dtype=bool)
    return int(train.sum()), sink.put_parquet(table.filter(train), out_dir, name)


def density(out: Path, graph: Path, *, k: int, test_fraction: float, split_seed: int) -> dict[str, Any]:
    """The `knn_density` score (mean distance to the k nearest neighbours) from the kNN graph parts."""
    parts = sorted(p for p in graph.rglob("*.parquet"))
    written = ray.get([  # tasks on any node read the parts from the store and put theirs into the attempt
        _density_part.remote(sink.readable(p), sink.destination(out), f"part-{i:05d}.parquet", k, test_fraction, split_seed)
        for i, p in enumerate(parts)
    ])
    sink.record(entry for _, entry in written)
    return {"rows": sum(rows for rows, _ in written)}


def select(out: Path, scores: Path, density: Path | None = None, ingest: Path | None = None, *, shards: int,
           rates: list[float], methods: list[str], strata: int, seed: int) -> dict[str, Any]:
    """Every (method, rate) selection, computed by shard actors from small per-shard summaries.

    `keep` is a fraction of the training rows (the scored ones); a coreset that loses a class is flagged.
    """
    result: dict[str, Any] = {}
    for name in methods:
        spec = parse_method(name)
        source = density if spec.get("score") == "knn_density" else scores
        sels = [{**spec, "keep": float(r), **({"strata": strata} if spec["method"] == "ccs" else {})} for r in rates]
        result.update(select_distributed(source, shards, sels, out, seed=seed))
    (out / "selections.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    metrics: dict[str, Any] = {name: info["rows"] for name, info in result.items()}
    labelled = pads.dataset(str(scores), format="parquet").to_table(columns=["id", "label"])
    metrics["training_rows"] = labelled.num_rows
    dropped = dropped_classes(out, labelled, read_label_map(ingest) if ingest is not None else None, names=sorted(result))
    if dropped:
        metrics["dropped_classes"] = dropped
        metrics["warning"] = "coresets missing whole classes: " + "; ".join(f"{n} lacks {v}" for n, v in dropped.items())
    return metrics


def dropped_classes(select_dir: Path, labelled: pa.Table, values: np.ndarray | None,
                    names: list[str] | None = None) -> dict[str, list[int]]:
    """Per selection, the classes (the user's label values) of the training rows that it holds none of."""
    ids, labels = labelled.column("id").to_numpy(), labelled.column("label").to_numpy()
    present = np.unique(labels)
    dropped = {}
    names = names if names is not None else sorted(p.name for p in select_dir.iterdir() if p.is_dir())
    for name in names:  # the parts may be in the stage's attempt on a store (core/sink.py)
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
             device: str = "auto") -> dict[str, Any]:
    """Train a fresh model on each coreset and on the full training split; final test accuracy of each.

    The held-out ids (and the user's labels) go to test_ids.parquet: the rows every accuracy is measured on.
    """
    names = sorted(p.name for p in select.iterdir() if p.is_dir())
    dev = resolve_device(device, cluster_gpus())
    common = {"test_fraction": test_fraction, "split_seed": split_seed, "steps": steps, "seed": seed,
              "batch_size": batch_size, "lr": lr, "hidden": hidden, "kind": model, "device": dev,
              "test_source": sink.readable(test) if test is not None else None}
    held = pads.dataset(str(test or ingest), format="parquet").to_table(columns=["id", "label"])
    if test is None:
        held = held.filter(pa.array(test_mask(held.column("id").to_numpy(), test_fraction, split_seed)))
    values = read_label_map(ingest)
    if values is not None:
        held = held.set_column(1, "label", pa.array(values[held.column("label").to_numpy()]))
    write_parquet(held.sort_by("id"), out / "test_ids.parquet")
    task = evaluate_coreset.options(num_gpus=1 if dev == "cuda" else 0)
    data = sink.readable(ingest)  # tasks on any node read the store objects behind the node-local copies
    refs = [task.remote(data, sink.readable(select / n), **common) for n in names]
    refs.append(task.remote(data, None, **common))
    answers = ray.get(refs)
    accuracy = {n: a["accuracy"] for n, a in zip([*names, "full"], answers)}
    (out / "accuracy.json").write_text(json.dumps(accuracy, indent=1, sort_keys=True))
    return {k: round(v, 4) for k, v in accuracy.items()}


def build(config: dict[str, Any]) -> Pipeline:
    """ingest → [build → knn_graph → density] → score → select → evaluate."""
    p = Pipeline("coreset")
    split = {"test_fraction": config["test_fraction"], "split_seed": config["split_seed"]}
    ingest_stage(p, config, require_label=True)
    select_inputs = {"scores": "score"}
    if config["knn"]["enabled"]:
        from pipelines.index import build_index, knn_graph

        knn = config["knn"]
        p.stage("build", build_index, inputs=["ingest"], params={
            "shards": config["shards"], "space": "l2", "M": knn["M"], "ef_construction": knn["ef_construction"],
            "random_seed": 100, "partition": "hash", "replicas": 1}, num_cpus=0)
        p.stage("knn_graph", knn_graph, inputs={"build": "build"},
                params={"k": knn["k"], "ef": knn["ef"], "nprobe": 0}, num_cpus=0)
        p.stage("density", density, inputs={"graph": "knn_graph"}, params={"k": knn["k"], **split}, num_cpus=0)
        select_inputs["density"] = "density"
    p.stage("score", score, inputs=["ingest"], params={"shards": config["shards"], **split, "device": config["device"],
                                                       "proxy": dict(config["proxy"])}, num_cpus=0)
    sel = config["select"]
    select_inputs["ingest"] = "ingest"
    p.stage("select", select, inputs=select_inputs, version="2", params={
        "shards": config["shards"], "rates": [float(r) for r in sel["rates"]], "methods": list(sel["methods"]),
        "strata": sel["strata"], "seed": sel["seed"]}, num_cpus=0)
    if config["evaluate"]["enabled"]:
        ev = {k: v for k, v in config["evaluate"].items() if k != "enabled"}
        inputs = {"ingest": "ingest", "select": "select"}
        if config["test_source"]:
            ingest_stage(p, {**config, "source": config["test_source"]}, require_label=True, name="ingest_test")
            p.stage("test_split", held_out_split, inputs={"ingest": "ingest", "ingest_test": "ingest_test"}, num_cpus=0,
                    params={"source": str(config["source"]), "test_source": str(config["test_source"])})
            inputs["test"] = "test_split"
        p.stage("evaluate", evaluate, inputs=inputs, version="2", params={**split, **ev, "model": "mlp", "device": config["device"]}, num_cpus=0)
    report_inputs = {"ingest": "ingest", "scores": "score", "select": "select"}
    if config["evaluate"]["enabled"]:
        report_inputs["evaluate"] = "evaluate"
    p.stage("report", coreset_report, inputs=report_inputs, num_cpus=0)
    return p


def summary(accuracy_json: Path) -> dict[str, float]:
    """Read an evaluate stage's accuracy table (for scripts and tests)."""
    return {k: float(v) for k, v in json.loads(Path(accuracy_json).read_text()).items()}
