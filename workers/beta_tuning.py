"""β from data: CCS's hard-cut fraction chosen per keep rate on a validation split, on Ray workers in parallel.

For each CCS method and keep rate, every β of shardwalk.core.coresets.selection.BETA_GRID (with β + keep ≤ 1) selects a
candidate coreset among the training rows less a held-out validation share (`VALIDATION`), and so does
random (class-balanced for a `-cb` method) of the same size; a fresh model is fitted on each candidate
(evaluation tasks, all at once) and scored on the validation rows, never on the test split. The highest
validation accuracy wins, ties to the smaller β — unless it beats random by no more than one standard error
of the validation accuracy: then the verdict is random (`beta` None; shardwalk.core.coresets.selection.choose_beta_or_random).
Candidates are exact selections (the same ids for any sharding) and training is seeded, so the choice does
not depend on the layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray

from shardwalk.core.coresets.evaluation import Split
from shardwalk.core.coresets.proxy_spec import TrainSpec
from shardwalk.core.coresets.selection import VALIDATION, beta_candidates, choose_beta_or_random
from shardwalk.core.storage import sink
from shardwalk.workers.progress_channel import wait_counted
from shardwalk.workers.scorer import evaluate_coreset, selection_ids

TUNING_SEED_OFFSET = 1000  # tuning trains with seeds apart from the reported evaluation's


def tune_betas(scores_dir: str | Path, source: Any, shards: int, methods: Sequence[dict[str, Any]],
               rates: Sequence[float], *, split: Split, train: TrainSpec, seed: int = 0, strata: int = 50,
               device: str = "cpu", standardize: str | bool = "auto") -> dict[tuple[int, float], dict[str, Any]]:
    """Per (index into `methods`, rate): {beta (None: random wins), validation accuracy per β, random's
    validation accuracy, validation rows, cpu_seconds of its candidates}.

    `methods` are parsed CCS method specs (shardwalk.core.coresets.selection_names.parse_method); `source` is what the
    evaluation tasks read (the ingest output). Random candidates are shared by methods of the same balance.
    """
    holdout = Split(split.test_fraction, split.split_seed, VALIDATION)
    jobs = [(m, r, b) for m in range(len(methods)) for r in rates for b in beta_candidates(r)]
    if not jobs:
        return {}
    balances = sorted({bool(m["class_balanced"]) for m in methods})
    randoms = [(cb, float(r)) for cb in balances for r in rates]
    sels = [{**methods[m], "keep": float(r), "beta": b, "strata": strata} for m, r, b in jobs]
    sels += [{"method": "random", "class_balanced": cb, "keep": r} for cb, r in randoms]
    candidates = selection_ids(scores_dir, shards, sels, seed=seed, holdout=holdout)
    tuning = dataclasses.replace(train, seed=train.seed + TUNING_SEED_OFFSET)
    task = evaluate_coreset.options(num_gpus=1 if device == "cuda" else 0)
    data = sink.readable(source) if isinstance(source, str | Path) else source
    refs = [task.remote(data, ids, holdout, tuning, device=device, standardize=standardize) for ids in candidates]
    results = wait_counted(refs, "tune beta", "tune beta", "models", get=ray.get)
    random_of = dict(zip(randoms, results[len(jobs):]))
    out: dict[tuple[int, float], dict[str, Any]] = {}
    for (m, r, b), res in zip(jobs, results):
        entry = out.setdefault((m, float(r)), {"validation": {}, "cpu_seconds": 0.0})
        entry["validation"][b] = float(res["accuracy"])
        entry["cpu_seconds"] += float(res["cpu_seconds"])
    for (m, r), entry in out.items():
        rand = random_of[(bool(methods[m]["class_balanced"]), r)]
        entry.update(random=float(rand["accuracy"]), validation_rows=int(rand["test_rows"]))
        entry["cpu_seconds"] += float(rand["cpu_seconds"])
        entry["beta"] = choose_beta_or_random(entry["validation"], entry["random"], entry["validation_rows"])
    return out
