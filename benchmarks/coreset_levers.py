"""Why does (or doesn't) a coreset beat random at one keep rate? Every β of the CCS grid and random, side by side.

    python -m benchmarks.coreset_levers --data mnist1d --n 20000 --rates 0.5 [--validation 0.15]
                                        [--tuning-seeds 3] [--seeds 5] [--proxy-epochs E] [--steps S]
                                        [--betas B ...] [--strata S ...] [--easiest E ... --easy-betas B ...]
                                        --json OUT.json

For each rate and each candidate (CCS at every β of the grid for the given methods, random, random-cb) it
measures what `select.beta = "auto"` sees — the accuracy on the held-out validation rows (one model per
tuning seed, selection among the training rows less those rows) — and what the user gets: the test
accuracy of the candidate selected among all training rows, mean ± std over `--seeds` seeds (the seed
drives the hash keys and the training, as in bench_coreset). So the JSON answers: how noisy is one
validation score (the std over tuning seeds), does the validation order predict the test order, and does
any β (the oracle) beat random on the test split at all. `--strata` adds CCS with fewer strata (1 = the hard cut,
then uniform), `--easiest` CCS that also drops the easiest fraction (hard-leaning), `--steps` another evaluation
budget (does it saturate?).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from benchmarks.bench_coreset import SETTINGS, _materialise
from shardwalk.core.coresets import checks
from shardwalk.core.coresets.evaluation import Split
from shardwalk.core.coresets.proxy import TrainSpec
from shardwalk.core.coresets.selection import beta_candidates
from shardwalk.core.coresets.selection_names import parse_method
from shardwalk.core.storage.files import write_json_atomic
from shardwalk.pipelines.runtime import connect
from shardwalk.workers.beta_tuning import TUNING_SEED_OFFSET
from shardwalk.workers.scorer import evaluate_coreset, score_dataset
from shardwalk.workers.selector import selection_ids


def _candidates(methods: list[str], rate: float, easiest: tuple[float, ...] = (),
                easy_betas: tuple[float, ...] = (0.0,), strata: tuple[int, ...] = (),
                betas: tuple[float, ...] | None = None) -> list[tuple[str, dict[str, Any]]]:
    out = [("random", {"method": "random", "class_balanced": False, "keep": rate}),
           ("random-cb", {"method": "random", "class_balanced": True, "keep": rate})]
    grid = [b for b in beta_candidates(rate) if betas is None or b in betas]
    for m in methods:
        for b in grid:
            out.append((f"{m}-beta{b:g}", {**parse_method(m), "keep": rate, "beta": b}))
        for st in strata:  # CCS with fewer strata (1: the hard cut, then uniform: no lean towards the hard tail)
            for b in grid:
                out.append((f"{m}-strata{st}-beta{b:g}", {**parse_method(m), "keep": rate, "beta": b, "strata": st}))
        for e in easiest:  # CCS that also drops the easiest fraction e (hard-leaning, for low pruning rates)
            for b in easy_betas:
                if b + e + rate <= 1.0 + 1e-12:
                    out.append((f"{m}-beta{b:g}-easy{e:g}", {**parse_method(m), "keep": rate, "beta": b, "easiest": e}))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = SETTINGS[args.data]
    proxy, train = dict(settings["proxy"]), dict(settings["train"])
    if args.n:
        proxy["models"] = 4
    if args.proxy_epochs:
        proxy["epochs"] = args.proxy_epochs
    if args.steps:
        train["steps"] = args.steps
    connect()
    load_at_start = list(os.getloadavg())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="coreset_levers-") as tmp:
        root = Path(tmp)
        source = _materialise(args.data, root, n=args.n)
        scores = root / "scores"
        scoring = score_dataset(str(source), 2, scores, **proxy)
        split = Split(0.2, 0)
        holdout = Split(0.2, 0, args.validation)
        refs: dict[tuple[str, float, str, int], Any] = {}
        for rate in args.rates:
            cands = _candidates(args.methods, rate, tuple(args.easiest), tuple(args.easy_betas), tuple(args.strata), args.betas)
            sels = [c for _, c in cands]
            val_ids = selection_ids(scores, 2, sels, seed=0, holdout=holdout)
            for (name, _), ids in zip(cands, val_ids):
                for t in range(args.tuning_seeds):
                    spec = TrainSpec(**train, seed=TUNING_SEED_OFFSET + t)
                    refs[(name, rate, "validation", t)] = evaluate_coreset.remote(str(source), ids, holdout, spec)
            for s in range(args.seeds):
                test_ids = selection_ids(scores, 2, sels, seed=s)
                for (name, _), ids in zip(cands, test_ids):
                    refs[(name, rate, "test", s)] = evaluate_coreset.remote(str(source), ids, split, TrainSpec(**train, seed=s))
        for s in range(args.seeds):
            refs[("full", 1.0, "test", s)] = evaluate_coreset.remote(str(source), None, split, TrainSpec(**train, seed=s))
        keys = list(refs)
        acc = dict(zip(keys, (r["accuracy"] for r in ray.get([refs[k] for k in keys]))))
    out: dict[str, Any] = {"data": args.data, "n": args.n, "proxy": proxy, "train": train, "validation": args.validation,
                           "tuning_seeds": args.tuning_seeds, "seeds": args.seeds, "rates": {}}
    for rate in args.rates:
        rows: dict[str, Any] = {}
        random_test = [acc[("random", rate, "test", s)] for s in range(args.seeds)]
        for name, _ in _candidates(args.methods, rate, tuple(args.easiest), tuple(args.easy_betas), tuple(args.strata), args.betas):
            val = [acc[(name, rate, "validation", t)] for t in range(args.tuning_seeds)]
            test = [acc[(name, rate, "test", s)] for s in range(args.seeds)]
            rows[name] = {"validation": checks.spread(val), "validation_values": val, "test": checks.spread(test),
                          "test_minus_random": checks.versus(test, random_test)}
        out["rates"][f"{rate:g}"] = {"candidates": rows, **_verdict(rows, args.methods)}
    out["full"] = checks.spread([acc[("full", 1.0, "test", s)] for s in range(args.seeds)])
    out.update(scoring_seconds=scoring["seconds"], load_average_at_start=load_at_start,
               load_average_at_end=list(os.getloadavg()), seconds=time.perf_counter() - started)
    return out


def _verdict(rows: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """Per method: the β one tuning seed picks, the β the mean over tuning seeds picks, the oracle β (test)."""
    out: dict[str, Any] = {}
    names = list(rows)
    val_mean = np.array([rows[n]["validation"]["mean"] for n in names])
    test_mean = np.array([rows[n]["test"]["mean"] for n in names])
    out["validation_test_rank_correlation"] = float(np.corrcoef(np.argsort(np.argsort(val_mean)),
                                                                np.argsort(np.argsort(test_mean)))[0, 1])
    out["validation_std_over_tuning_seeds_median"] = float(np.median([rows[n]["validation"]["std"] for n in names]))
    for m in methods:
        mine = [n for n in names if n.startswith(m + "-beta") and "-easy" not in n]
        if not mine:
            continue
        one = max(mine, key=lambda n: (rows[n]["validation_values"][0], -len(n)))
        mean = max(mine, key=lambda n: rows[n]["validation"]["mean"])
        oracle = max(mine, key=lambda n: rows[n]["test"]["mean"])
        out[m] = {name: {"pick": n, "test_minus_random": rows[n]["test_minus_random"]["difference"]}
                  for name, n in (("one_tuning_seed", one), ("mean_of_tuning_seeds", mean), ("oracle", oracle))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coreset_levers", description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(SETTINGS), default="mnist1d")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5])
    parser.add_argument("--methods", nargs="+", default=["ccs-el2n-cb", "ccs-el2n"])
    parser.add_argument("--validation", type=float, default=0.15)
    parser.add_argument("--tuning-seeds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--proxy-epochs", type=int, default=None)
    parser.add_argument("--easiest", type=float, nargs="*", default=[],
                        help="also CCS that drops this fraction of the easiest rows (with each --easy-betas β)")
    parser.add_argument("--easy-betas", type=float, nargs="+", default=[0.0])
    parser.add_argument("--steps", type=int, default=None, help="evaluation training steps (does the budget saturate?)")
    parser.add_argument("--betas", type=float, nargs="+", default=None, help="only these β of the grid")
    parser.add_argument("--strata", type=int, nargs="*", default=[],
                        help="also CCS with this many strata (every β of the grid), beside the default 50")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(args)
    for rate, r in report["rates"].items():
        print(f"keep {rate}: rank corr(val, test) {r['validation_test_rank_correlation']:.2f}, "
              f"median val std {r['validation_std_over_tuning_seeds_median']:.4f}")
        for name, row in r["candidates"].items():
            print(f"  {name:<22} val {row['validation']['mean']:.4f}±{row['validation']['std']:.4f}  "
                  f"test {row['test']['mean']:.4f}±{row['test']['std']:.4f}  "
                  f"Δrandom {row['test_minus_random']['difference']:+.4f} p={row['test_minus_random']['p_value']}")
        for m in report_methods(r):
            print(f"  {m}: {json.dumps(r[m])}")
    print("full", report["full"], "seconds", round(report["seconds"]), "load", report["load_average_at_start"])
    if args.json:
        write_json_atomic(args.json, report)
    return 0


def report_methods(rate_report: dict[str, Any]) -> list[str]:
    return [k for k in rate_report if k.startswith(("ccs", "d2"))]


if __name__ == "__main__":
    sys.exit(main())
