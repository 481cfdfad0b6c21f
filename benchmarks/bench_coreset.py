"""Coreset benchmark: CCS vs random vs top-k vs full data, on real data that ships with a package.

    python -m benchmarks.bench_coreset [--data mnist5k|digits|mnist1d] [--n ROWS] [--seeds 5] [--quick]
                                       [--scoring-only] --json OUT.json

Protocol (as in Zheng et al. 2023): scores come from proxies trained once on the training split;
every coreset (keep = 0.7, 0.5, 0.3, 0.1) is then used to train a fresh model for the SAME number of
steps, and the test accuracy at the end of training (not the best seen) is averaged over seeds (the
seed drives both the selection's hash keys and the training). Also measured: scoring throughput with
1 and 2 shard actors (the layout chosen automatically: independent proxies per actor when the data fits
one), whether 1, 2 and 3 scoring actors give identical scores, and whether 1, 2 and 4 shards select
identical ids (checked in this run). `--n` sizes a generated dataset (mnist1d: `builtin:mnist1d?n=N`);
with `--n` the proxies are 4 so that 2 actors split them evenly. `--scoring-only` skips the accuracy study.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray

from core import coreset
from core.datasets import load_builtin
from core.evaluation import Split
from core.io import write_json_atomic, write_parquet
from core.proxy import TrainSpec
from core.selection_names import parse_method, read_selection, selection_name
from pipelines.runtime import connect
from workers.scorer import evaluate_coreset, score_dataset, select_distributed

TUNED = "-tuned"  # suffix: β chosen per rate on a validation split (never the test split)
METHODS = ["ccs-aum", "ccs-el2n", "ccs-aum-cb", "ccs-el2n-cb", "ccs-aum-cb" + TUNED, "ccs-el2n-cb" + TUNED,
           "random", "random-cb", "topk-el2n", "rs2"]
BETA_GRID = [0.0, 0.1, 0.2, 0.3, 0.4]
VALIDATION = 0.15  # fraction of the training split held out for tuning β
RATES = [0.7, 0.5, 0.3, 0.1]
# Per dataset: proxy (scoring) and evaluation training settings. Steps are identical for every coreset.
SETTINGS: dict[str, dict[str, Any]] = {
    # Large proxy batches: a step's compute must dwarf the ~1 ms gloo all-reduce latency for 2 actors to pay.
    "mnist5k": {"proxy": {"models": 3, "epochs": 20, "batch_size": 1024, "hidden": 256, "lr": 0.3, "el2n_epoch": 3},
                "train": {"steps": 800, "batch_size": 128, "hidden": 256, "lr": 0.05}},
    "digits": {"proxy": {"models": 3, "epochs": 10, "batch_size": 128, "hidden": 64, "lr": 0.05, "el2n_epoch": 2},
               "train": {"steps": 500, "batch_size": 64, "hidden": 128, "lr": 0.05}},
    "mnist1d": {"proxy": {"models": 3, "epochs": 15, "batch_size": 128, "hidden": 256, "lr": 0.05, "el2n_epoch": 3},
                "train": {"steps": 1500, "batch_size": 128, "hidden": 256, "lr": 0.05}},
}


def _materialise(data: str, root: Path, parts: int = 4, n: int | None = None) -> Path:
    """Write the dataset as Parquet parts so shard actors read their own rows from files."""
    table = load_builtin(f"builtin:{data}" + (f"?n={n}" if n else ""))
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        write_parquet(table.slice(a, b - a), root / "data" / f"part-{i:05d}.parquet")
    return root / "data"


def _throughput(source: Path, root: Path, proxy: dict[str, Any], repeats: int) -> dict[str, Any]:
    """Examples/s of scoring with 1 and 2 actors, alternating runs; the best of each (least disturbed)."""
    runs: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}  # CPU seconds of the busiest actor (its share of the work)
    for r in range(repeats):
        for shards in (1, 2):
            res = score_dataset(str(source), shards, root / f"scores-{shards}-{r}", num_cpus=1, **proxy)
            runs[shards].append(res["examples_per_second"])
            cpu[shards].append(max(res["actor_cpu_seconds"]))
    best = {s: max(v) for s, v in runs.items()}
    return {"examples_per_second": {str(s): v for s, v in runs.items()}, "best": best, "layout": res["mode"],
            "speedup": best[2] / best[1], "cpu_bound_speedup": min(cpu[1]) / min(cpu[2]),
            "actor_cpu_seconds": {str(s): v for s, v in cpu.items()}, "load_average": list(os.getloadavg())}


def _scores_identical(source: Path, root: Path, proxy: dict[str, Any]) -> bool:
    """Scores of 1, 2 and 3 actors (2 from the throughput runs, 3 scored here), compared bit for bit."""
    score_dataset(str(source), 3, root / "scores-3", num_cpus=0.5, **proxy)
    tables = [pq.read_table(root / d).sort_by("id") for d in ("scores-1-0", "scores-2-0", "scores-3")]
    return all(t.equals(tables[0]) for t in tables[1:])


def _evaluate(source: Path, selected: str | None, common: dict[str, Any], seed: int, *, validation: float = 0.0,
              rs2_keep: float | None = None) -> Any:
    """The evaluation task of one coreset: `common` holds the split and the training settings (bar the seed)."""
    split = Split(common["test_fraction"], common["split_seed"], validation)
    train = TrainSpec(**{k: v for k, v in common.items() if k not in ("test_fraction", "split_seed")}, seed=seed)
    return evaluate_coreset.remote(str(source), selected, split, train, rs2_keep=rs2_keep)


def _selections(methods: list[str], rates: list[float]) -> list[dict[str, Any]]:
    out = []
    for name in methods:
        if name == "rs2":
            continue
        spec = parse_method(name)
        out += [{**spec, "keep": r} for r in rates]
    return out


def _tune_betas(
    source: Path, scores_dir: Path, root: Path, tuned: list[str], rates: list[float], common: dict, tune_seeds: int
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
    """Pick β per (tuned method, rate) by accuracy on a validation split carved from the training split.

    The test split is never looked at; selection and training seeds (1000+) differ from the reported ones.
    """
    if not tuned:
        return {}, {}
    jobs = [(m, r, b) for m in tuned for r in rates for b in BETA_GRID if b + r <= 1.0]
    refs = {}
    for t in range(tune_seeds):
        sels = [{**parse_method(m[: -len(TUNED)]), "keep": r, "beta": b} for m, r, b in jobs]
        select_distributed(scores_dir, 2, sels, root / f"tune-{t}", seed=1000 + t)
        for (m, r, b), sel in zip(jobs, sels):
            name = selection_name(sel["method"], r, sel.get("score"), sel["class_balanced"], b)
            refs[(m, r, b, t)] = _evaluate(source, str(root / f"tune-{t}" / name), common, 1000 + t,
                                           validation=VALIDATION)
    keys = list(refs)
    got = dict(zip(keys, ray.get([refs[k] for k in keys])))
    table: dict[str, dict[str, dict[str, float]]] = {}
    best: dict[str, dict[str, float]] = {}
    for m, r, b in jobs:
        acc = float(np.mean([got[(m, r, b, t)]["accuracy"] for t in range(tune_seeds)]))
        table.setdefault(m, {}).setdefault(str(r), {})[f"{b:g}"] = acc
    for m, by_rate in table.items():
        best[m] = {r: float(max(accs, key=lambda b: (accs[b], -float(b)))) for r, accs in by_rate.items()}
    return best, table


def _identical_across_shards(scores_dir: Path, root: Path, sels: list[dict[str, Any]]) -> bool:
    """Run every selection with 1, 2 and 4 shards and against the single-process API; compare ids."""
    table = pq.read_table(scores_dir)
    ok = True
    for shards in (1, 2, 4):
        select_distributed(scores_dir, shards, sels, root / f"ident-{shards}", seed=0)
    for sel in sels:
        name = selection_name(sel["method"], sel["keep"], sel.get("score"), sel["class_balanced"])
        ids = [read_selection(root / f"ident-{s}" / name) for s in (1, 2, 4)]
        opts = {k: v for k, v in sel.items() if k not in ("method", "keep")}
        single = coreset.select(table, sel["method"], sel["keep"], seed=0, **opts).column("id").to_numpy()
        ok &= all(np.array_equal(ids[0], x) for x in [*ids[1:], single])
    return bool(ok)


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = SETTINGS[args.data]
    proxy, train = dict(settings["proxy"]), dict(settings["train"])
    methods, rates, seeds = list(args.methods), list(RATES), args.seeds
    if args.n:
        proxy["models"] = 4
    if args.quick:
        proxy.update(models=2, epochs=2 if args.n else 4)
        train["steps"] = max(100, train["steps"] // 4)
        rates, seeds = [0.5, 0.1], min(seeds, 2)
    connect()
    with tempfile.TemporaryDirectory(prefix="bench_coreset-") as tmp:
        return _run_in(Path(tmp), args, proxy, train, methods, rates, seeds)


def _run_in(
    root: Path, args: argparse.Namespace, proxy: dict, train: dict, methods: list[str], rates: list[float], seeds: int
) -> dict[str, Any]:
    source = _materialise(args.data, root, n=args.n)
    started = time.perf_counter()
    speed = _throughput(source, root, proxy, repeats=1 if args.quick else 3)
    scoring = {
        "scoring_examples_per_second": speed["examples_per_second"],
        "scoring_examples_per_second_best": {str(k): v for k, v in speed["best"].items()},
        "scoring_speedup_2_vs_1": speed["speedup"],
        "scoring_layout_2_actors": speed["layout"],
        "scores_identical_across_actor_counts": _scores_identical(source, root, proxy),
        "scoring_cpu_bound_speedup_2_vs_1": speed["cpu_bound_speedup"],
        "scoring_actor_cpu_seconds": speed["actor_cpu_seconds"],
        "load_average_during_scoring": speed["load_average"],
    }
    if args.scoring_only:
        return {"data": args.data, "n": args.n, "quick": bool(args.quick), "proxy": proxy, **scoring,
                "targets": {"scoring_speedup_ge_1.6": speed["speedup"] >= 1.6,
                            "scores_identical_across_actor_counts": scoring["scores_identical_across_actor_counts"]},
                "seconds": time.perf_counter() - started}
    scores_dir = root / "scores-2-0"
    plain = [m for m in methods if m != "rs2" and not m.endswith(TUNED)]
    identical = _identical_across_shards(scores_dir, root, _selections(plain, rates))
    common = {"test_fraction": 0.2, "split_seed": 0, **train}
    tuned_beta, tuning = _tune_betas(source, scores_dir, root, [m for m in methods if m.endswith(TUNED)], rates, common,
                                     tune_seeds=1 if args.quick else 2)
    refs: dict[tuple[str, float, int], Any] = {}
    for seed in range(seeds):
        jobs = [(m, r, {**parse_method(m), "keep": r}) for m in plain for r in rates]
        jobs += [(m, r, {**parse_method(m[: -len(TUNED)]), "keep": r, "beta": tuned_beta[m][str(r)]})
                 for m in tuned_beta for r in rates]
        select_distributed(scores_dir, 2, [sel for _, _, sel in jobs], root / f"sel-{seed}", seed=seed)
        for method, r, sel in jobs:
            name = selection_name(sel["method"], r, sel.get("score"), sel["class_balanced"], sel.get("beta"))
            refs[(method, r, seed)] = _evaluate(source, str(root / f"sel-{seed}" / name), common, seed)
        if "rs2" in methods:
            for r in rates:
                refs[("rs2", r, seed)] = _evaluate(source, None, common, seed, rs2_keep=r)
        refs[("full", 1.0, seed)] = _evaluate(source, None, common, seed)
    keys = list(refs)
    results = dict(zip(keys, ray.get([refs[k] for k in keys])))
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        accuracy[method] = {}
        for r in rates:
            accs = [results[(method, r, s)]["accuracy"] for s in range(seeds)]
            accuracy[method][str(r)] = {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "n": len(accs)}
    full = [results[("full", 1.0, s)]["accuracy"] for s in range(seeds)]
    return {
        "data": args.data,
        "n": args.n,
        "seeds": seeds,
        "rates": rates,
        "quick": bool(args.quick),
        "proxy": proxy,
        "train": train,
        "accuracy": accuracy,
        "full_accuracy": {"mean": float(np.mean(full)), "std": float(np.std(full)), "n": len(full)},
        # scoring_cpu_bound_speedup_2_vs_1 is a diagnostic, not the target: the speedup if each actor had a
        # dedicated core (busiest actor's CPU seconds, 1 vs 2 actors).
        **scoring,
        "selection_identical_across_shards": identical,
        "tuned_beta": tuned_beta,
        "beta_tuning_validation_accuracy": tuning,
        "targets": _targets(accuracy, float(np.mean(full)), speed["speedup"], rates),
        "seconds": time.perf_counter() - started,
    }


def _targets(acc: dict[str, Any], full: float, speedup: float, rates: list[float]) -> dict[str, Any]:
    """The issue's targets, evaluated honestly on this run's numbers (None when not measured)."""
    mean = lambda m, r: acc.get(m, {}).get(str(r), {}).get("mean")  # noqa: E731
    std = lambda m, r: acc.get(m, {}).get(str(r), {}).get("std")  # noqa: E731
    ccs = [m for m in acc if m.startswith("ccs")]
    cb = [m for m in ccs if "-cb" in m]
    out: dict[str, Any] = {"scoring_speedup_ge_1.6": speedup >= 1.6}
    if 0.1 in rates and "random" in acc:
        rnd = mean("random", 0.1)
        if "topk-el2n" in acc:
            out["keep0.1_topk_below_random"] = mean("topk-el2n", 0.1) < rnd
        if ccs:
            out["keep0.1_best_ccs_ge_random"] = max(mean(m, 0.1) for m in ccs) >= rnd
        if cb:
            best = max(cb, key=lambda m: mean(m, 0.1))
            spread = max(std(best, 0.1), std("random", 0.1))
            out["keep0.1_best_cb_minus_random"] = mean(best, 0.1) - rnd
            out["keep0.1_cb_beats_random_by_more_than_spread"] = mean(best, 0.1) - rnd > spread
    if 0.7 in rates:
        near = {m: abs(mean(m, 0.7) - full) <= 0.02 for m in [*ccs, "random"] if m in acc}
        out["keep0.7_within_2_points_of_full"] = near
    return out


def _print_table(report: dict[str, Any]) -> None:
    rates = report["rates"]
    print(f"\ncoreset benchmark on {report['data']} ({report['seeds']} seeds), final test accuracy mean ± std")
    print(f"{'method':<20}" + "".join(f"{'keep ' + str(r):>18}" for r in rates) + f"{'ratio vs random @' + str(rates[-1]):>24}")
    rnd = report["accuracy"].get("random", {})
    for method, by_rate in report["accuracy"].items():
        cells = "".join(f"{by_rate[str(r)]['mean']:>11.4f} ± {by_rate[str(r)]['std']:.3f}" for r in rates)
        ratio = by_rate[str(rates[-1])]["mean"] / rnd[str(rates[-1])]["mean"] if rnd else float("nan")
        print(f"{method:<20}{cells}{ratio:>24.3f}")
    f = report["full_accuracy"]
    print(f"{'full data':<20}{f['mean']:>11.4f} ± {f['std']:.3f}")
    print(f"scoring speedup 2 vs 1 actors: {report['scoring_speedup_2_vs_1']:.2f}x; "
          f"selection identical across 1/2/4 shards: {report['selection_identical_across_shards']}")
    print("targets:", json.dumps(report["targets"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_coreset", description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(SETTINGS), default="mnist5k")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--n", type=int, default=None, help="rows of a generated dataset (mnist1d only)")
    parser.add_argument("--scoring-only", action="store_true", help="only scoring throughput and identity")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.n is not None and (args.data != "mnist1d" or args.n < 100):
        parser.error("--n needs --data mnist1d and at least 100 rows")
    for m in args.methods:
        if m != "rs2":
            parse_method(m.removesuffix(TUNED))
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    report = run(args)
    if args.scoring_only:
        print(json.dumps({k: v for k, v in report.items() if k != "proxy"}, indent=1))
    else:
        _print_table(report)
    if args.json:
        write_json_atomic(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
