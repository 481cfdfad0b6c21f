"""β from data: CCS's hard-cut fraction chosen per keep rate on a validation split, on Ray workers in parallel.

For each CCS method and keep rate, every β of shardwalk.core.coresets.selection.BETA_GRID (with β + keep ≤ 1) selects a
candidate coreset among the training rows less a held-out validation share (`VALIDATION`), and so does
random (class-balanced for a `-cb` method) of the same size; a fresh model is fitted on each candidate
(evaluation tasks, all at once) and scored on the validation rows, never on the test split. The highest
validation accuracy wins, ties to the smaller β. Then the winner and random are selected again with
`CONFIRM_SEEDS` fresh selection seeds (new hash keys) and fitted with fresh training seeds: the β stands only
if it beats random on average over the refits (shardwalk.core.coresets.selection.beats_random);
otherwise the verdict is random (`beta` None).
A `ccs-SCORE-auto` method tunes its plain and its class-balanced variant so, and takes per rate the variant
whose verdict scored higher on the refits (shardwalk.core.coresets.selection.choose_balance); a variant also
listed on its own is fitted once.
Candidates are exact selections (the same ids for any sharding) and training is seeded, so the choice does
not depend on the layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import ray

from shardwalk.core.coresets.evaluation import Split
from shardwalk.core.coresets.proxy_spec import TrainSpec
from shardwalk.core.coresets.selection import (
    BETA_GRID,
    CONFIRM_SEEDS,
    VALIDATION,
    beats_random,
    beta_candidates,
    choose_beta,
    method_verdicts,
    tuning_variants,
)
from shardwalk.core.storage import sink
from shardwalk.workers.progress_channel import wait_counted
from shardwalk.workers.scorer import evaluate_coreset
from shardwalk.workers.selector import SelectShards

TUNING_SEED_OFFSET = 1000  # tuning trains with seeds apart from the reported evaluation's


def tune_betas(pool: SelectShards, source: Any, methods: Sequence[dict[str, Any]],
               rates: Sequence[float], *, split: Split, train: TrainSpec, seed: int = 0, strata: int = 50,
               device: str = "cpu", standardize: str | bool = "auto", grid: Sequence[float] = BETA_GRID
               ) -> dict[tuple[int, float], dict[str, Any]]:
    """Per (index into `methods`, rate): {beta (None: random wins), validation accuracy per β, `best` (the
    grid's winner), `confirm` (its validation accuracy and random's per fit: tuning fit first), cpu_seconds};
    a `-auto` method's entry is its chosen variant's, plus `class_balanced` (the choice) and `balance` (each
    variant's refit accuracy, by "plain" / "cb"), its cpu_seconds both variants'.

    `pool` holds the scores table's selection actors; `methods` are parsed CCS method specs
    (shardwalk.core.coresets.selection_names.parse_method); `source` is what the evaluation tasks read (the ingest
    output). Random candidates are shared by methods of the same balance.
    """
    variants = tuning_variants(methods)
    tuned = _tune_variants(pool, source, variants, rates, split=split, train=train, seed=seed,
                           strata=strata, device=device, standardize=standardize, grid=grid)
    return method_verdicts(methods, rates, tuned)


def _tune_variants(pool: SelectShards, source: Any, methods: Sequence[dict[str, Any]],
                   rates: Sequence[float], *, split: Split, train: TrainSpec, seed: int, strata: int, device: str,
                   standardize: str | bool, grid: Sequence[float]) -> dict[tuple[int, float], dict[str, Any]]:
    """`tune_betas` of CCS variants of a fixed balance (no `-auto`), each once."""
    holdout = Split(split.test_fraction, split.split_seed, VALIDATION)
    jobs = [(m, float(r), b) for m in range(len(methods)) for r in rates for b in beta_candidates(r, grid)]
    if not jobs:
        return {}
    randoms = [(cb, float(r)) for cb in sorted({bool(m["class_balanced"]) for m in methods}) for r in rates]
    sels = [{**methods[m], "keep": r, "beta": b, "strata": strata} for m, r, b in jobs]
    sels += [{"method": "random", "class_balanced": cb, "keep": r} for cb, r in randoms]
    candidates = pool.ids(sels, seed=seed, holdout=holdout)
    ids = dict(zip([*jobs, *randoms], candidates))
    fit = _fitter(source, holdout, train, device, standardize)
    results = dict(zip(ids, fit([(ids[key], 0) for key in ids], "tune beta")))
    out: dict[tuple[int, float], dict[str, Any]] = {}
    for (m, r, b) in jobs:
        entry = out.setdefault((m, r), {"validation": {}, "cpu_seconds": 0.0})
        entry["validation"][b] = float(results[(m, r, b)]["accuracy"])
        entry["cpu_seconds"] += float(results[(m, r, b)]["cpu_seconds"])
    for entry in out.values():
        entry["best"] = choose_beta(entry["validation"])
    # refits draw fresh hash keys too (a new candidate of the same β) and train with fresh seeds, as the
    # evaluation's seeds do: both the selection and the training vary, not only the training
    keys = [(m, r, e["best"]) for (m, r), e in out.items()] + randoms
    refit_sels = [sels[jobs.index(key)] if len(key) == 3 else sels[len(jobs) + randoms.index(key)] for key in keys]
    refits = [(key, k) for k in range(1, CONFIRM_SEEDS + 1) for key in keys]
    fresh = [ids for k in range(1, CONFIRM_SEEDS + 1)
             for ids in pool.ids(refit_sels, seed=seed + k, holdout=holdout)]
    refitted = dict(zip(refits, fit([(ids_k, k) for ids_k, (_, k) in zip(fresh, refits)], "confirm beta")))
    for (m, r), entry in out.items():
        rand = (bool(methods[m]["class_balanced"]), r)
        fits = range(CONFIRM_SEEDS + 1)
        best = [results[(m, r, entry["best"])] if k == 0 else refitted[((m, r, entry["best"]), k)] for k in fits]
        rnd = [results[rand] if k == 0 else refitted[(rand, k)] for k in fits]
        entry["confirm"] = {"beta": [float(x["accuracy"]) for x in best], "random": [float(x["accuracy"]) for x in rnd]}
        entry["cpu_seconds"] += sum(float(x["cpu_seconds"]) for x in [*best[1:], *rnd])
        refit = {side: fits[1:] for side, fits in entry["confirm"].items()}  # the tuning fit chose: biased upwards
        entry["beta"] = entry["best"] if beats_random(refit["beta"], refit["random"]) else None
    return out


def _fitter(source: Any, holdout: Split, train: TrainSpec, device: str, standardize: str | bool
            ) -> Callable[[list[tuple[np.ndarray, int]], str], list[dict[str, Any]]]:
    """fit([(candidate ids, k)], label): the validation result of one model per candidate (all at once), its
    seed the tuning seed + k (apart from the reported evaluation's seeds)."""
    task = evaluate_coreset.options(num_gpus=1 if device == "cuda" else 0)
    data = sink.readable(source) if isinstance(source, str | Path) else source
    base = train.seed + TUNING_SEED_OFFSET

    def fit(jobs: list[tuple[np.ndarray, int]], label: str) -> list[dict[str, Any]]:
        refs = [task.remote(data, ids, holdout, dataclasses.replace(train, seed=base + k), device=device,
                            standardize=standardize) for ids, k in jobs]
        return wait_counted(refs, label, label, "models", get=ray.get)

    return fit
