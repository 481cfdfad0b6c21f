"""Coreset benchmark: every method side by side (CCS with β chosen from data, random, top-k, full data).

    python -m benchmarks.bench_coreset [--data mnist5k|digits|mnist1d] [--n ROWS] [--seeds 5] [--quick]
                                       [--rates 0.5 0.3 0.1] [--scoring-only] --json OUT.json

Protocol (as in Zheng et al. 2023), run with the pipeline's own functions: scores come from proxies trained
once on the training split; β of every CCS method is chosen per keep rate on a validation split of the
training rows (workers/beta_tuning.py, `select.beta = "auto"`: random where the best β does not beat it again
on fresh refits, `fallback_to_random` in the JSON), and a `ccs-SCORE-auto` method's class balance with it
(`chosen_balance`); every coreset (keep = 0.5, 0.3, 0.1) then
trains a fresh model for the SAME number of steps, and the test accuracy at the end of training is
reported as mean ± sample std over seeds (the seed drives both the selection's hash keys and the training),
each compared with random by Welch's t-test (core/coresets/checks.py). Features are scaled as the pipeline's
`standardize = "auto"` decides. Also checked: 1, 2 and 4 shards and the single-process API select identical
ids for every method. `--n` sizes a generated dataset (mnist1d: `builtin:mnist1d?n=N`; then 4 proxies).
`--scoring-only` measures scoring throughput with 1 and 2 actors instead.
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

from shardwalk.core.coresets import checks as coreset_checks
from shardwalk.core.coresets import single_process as coreset
from shardwalk.core.coresets.evaluation import Split
from shardwalk.core.coresets.proxy import TrainSpec
from shardwalk.core.coresets.selection import VALIDATION
from shardwalk.core.coresets.selection_names import AUTO, parse_method, read_selection, selection_name
from shardwalk.core.data.builtin import load_builtin
from shardwalk.core.storage.files import write_json_atomic, write_parquet
from shardwalk.pipelines.coreset import DEFAULTS, MARKS, method_request, selection_request
from shardwalk.pipelines.runtime import connect
from shardwalk.workers.beta_tuning import tune_betas
from shardwalk.workers.scorer import evaluate_coreset, score_dataset
from shardwalk.workers.selector import SelectShards, select_distributed, selection_ids

DEFAULT_METHOD = DEFAULTS["select"]["methods"][0]  # the coreset pipeline's and the demo's default
METHODS = list(dict.fromkeys([DEFAULT_METHOD, "ccs-el2n-auto", "ccs-el2n-cb", "ccs-aum-cb", "ccs-el2n", "d2-el2n-cb",
                              "d2-el2n", "random", "random-cb", "topk-el2n"]))
RATES = [0.5, 0.3, 0.1]
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


def _selections(methods: list[str], rates: list[float], tuned: dict[tuple[str, float], dict[str, Any]]
                ) -> list[dict[str, Any]]:
    """Every (method, rate) selection; CCS with its β (and a `-auto` method's balance) chosen on the validation
    split (named without β), or random under the CCS name where no β beat random on validation (the pipeline's
    `method_request`)."""
    out = []
    for name in methods:
        if name == "rs2" or name.startswith("d2"):
            continue
        out += [method_request(name, r, 50, "auto", tuned) for r in rates]
    return out


def _name(sel: dict[str, Any]) -> str:
    return sel.get("name") or selection_name(sel["method"], sel["keep"], sel.get("score"), sel["class_balanced"])


def _tune(source: Path, scores_dir: Path, methods: list[str], rates: list[float], train: dict[str, Any]
          ) -> tuple[dict[tuple[str, float], dict[str, Any]], dict[str, Any], dict[str, float]]:
    """β (and a `-auto` method's balance) per (CCS method, rate) exactly as the pipeline's `select.beta = "auto"`
    (workers/beta_tuning.py)."""
    ccs = [m for m in methods if m != "rs2" and parse_method(m)["method"] == "ccs"]
    with SelectShards(scores_dir, 2) as pool:
        tuned = tune_betas(pool, str(source), [parse_method(m) for m in ccs], rates, split=Split(0.2, 0),
                           train=TrainSpec(**train, seed=0))
    chosen = {(ccs[m], r): v for (m, r), v in tuned.items()}
    table = {ccs[m]: {} for m in range(len(ccs))}
    cpu = dict.fromkeys(ccs, 0.0)
    for (m, r), v in tuned.items():
        table[ccs[m]][str(r)] = {**{f"{b:g}": acc for b, acc in v["validation"].items()}, "best": v["best"],
                                 "confirm": v["confirm"], **({"balance": v["balance"]} if "balance" in v else {})}
        cpu[ccs[m]] += v["cpu_seconds"]
    return chosen, table, cpu


def _identical_across_shards(scores_dir: Path, root: Path, sels: list[dict[str, Any]]) -> dict[str, bool]:
    """Per method: 1, 2 and 4 shards and the single-process API select the same ids (β as chosen); and the
    validation candidates β tuning trains on are the same for 1 and 2 shards."""
    table = pq.read_table(scores_dir)
    for shards in (1, 2, 4):
        select_distributed(scores_dir, shards, [selection_request(s) for s in sels], root / f"ident-{shards}", seed=0)
    out: dict[str, bool] = {}
    for sel in sels:
        ids = [read_selection(root / f"ident-{s}" / _name(sel)) for s in (1, 2, 4)]
        opts = {k: v for k, v in sel.items() if k not in ("method", "keep", "name", *MARKS)}
        single = coreset.select(table, sel["method"], sel["keep"], seed=0, **opts).column("id").to_numpy()
        method = _name(sel).rsplit("-keep", 1)[0]
        out[method] = out.get(method, True) and all(np.array_equal(ids[0], x) for x in [*ids[1:], single])
    ccs = [sel for sel in sels if sel["method"] == "ccs"]
    if ccs:
        holdout = Split(0.2, 0, VALIDATION)
        one, two = (selection_ids(scores_dir, s, [{**selection_request(c), "name": None} for c in ccs], holdout=holdout)
                    for s in (1, 2))
        out["beta_tuning_candidates"] = all(np.array_equal(a, b) for a, b in zip(one, two))
    return out


def _d2(source: Path, scores_dir: Path, root: Path, methods: list[str], rates: list[float], seeds: int
        ) -> dict[str, Any]:
    """The kNN graph (2 shards, k = 10, as the pipeline's knn section), then every D2 selection per seed; timed,
    and checked identical for 1, 2 and 4 shards."""
    from shardwalk.workers.d2_select import select_d2
    from shardwalk.workers.sharded_index import ShardedIndex

    t = time.perf_counter()
    with ShardedIndex.build(source, shards=2, space="l2", M=16, ef_construction=100) as index:
        index.knn_graph(root / "graph", k=10, ef=64, built_from=source)
    graph_seconds = time.perf_counter() - t
    sels = [{**parse_method(m), "keep": r} for m in methods for r in rates]
    seconds: dict[str, float] = {}
    for seed in range(seeds):
        for m in methods:
            t = time.perf_counter()
            select_d2(root / "graph", scores_dir, 2, [s for s in sels if _d2_name(s).startswith(m + "-keep")],
                      root / f"d2-{seed}", seed=seed)
            seconds[m] = seconds.get(m, 0.0) + (time.perf_counter() - t) / seeds
    identical = {}
    for shards in (1, 4):
        select_d2(root / "graph", scores_dir, shards, sels, root / f"d2-ident-{shards}", seed=0)
    for m in methods:
        names = [_d2_name(s) for s in sels if _d2_name(s).startswith(m + "-keep")]
        identical[m] = all(np.array_equal(read_selection(root / "d2-0" / n), read_selection(root / f"d2-ident-{s}" / n))
                           for n in names for s in (1, 4))
    return {"graph_seconds": graph_seconds, "selection_seconds_per_seed": seconds, "identical": identical}


def _d2_name(sel: dict[str, Any]) -> str:
    return selection_name("d2", sel["keep"], sel["score"], sel["class_balanced"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = SETTINGS[args.data]
    proxy, train = dict(settings["proxy"]), dict(settings["train"])
    methods, rates, seeds = list(args.methods), list(args.rates), args.seeds
    if args.n:
        proxy["models"] = 4
    if args.quick:
        proxy.update(models=2, epochs=2 if args.n else 4)
        train["steps"] = max(100, train["steps"] // 4)
        rates, seeds = [0.5, 0.1], min(seeds, 2)
    connect()
    with tempfile.TemporaryDirectory(prefix="bench_coreset-") as tmp:
        if args.scoring_only:
            return _scoring_only(Path(tmp), args, proxy)
        return _run_in(Path(tmp), args, proxy, train, methods, rates, seeds)


def _scoring_only(root: Path, args: argparse.Namespace, proxy: dict) -> dict[str, Any]:
    """Scoring throughput with 1 and 2 actors and identical scores across actor counts."""
    source = _materialise(args.data, root, n=args.n)
    started = time.perf_counter()
    speed = _throughput(source, root, proxy, repeats=1 if args.quick else 3)
    identical = _scores_identical(source, root, proxy)
    return {"data": args.data, "n": args.n, "quick": bool(args.quick), "proxy": proxy,
            "scoring_examples_per_second": speed["examples_per_second"],
            "scoring_examples_per_second_best": {str(k): v for k, v in speed["best"].items()},
            "scoring_speedup_2_vs_1": speed["speedup"], "scoring_layout_2_actors": speed["layout"],
            "scores_identical_across_actor_counts": identical,
            "scoring_cpu_bound_speedup_2_vs_1": speed["cpu_bound_speedup"],
            "scoring_actor_cpu_seconds": speed["actor_cpu_seconds"], "load_average_during_scoring": speed["load_average"],
            "targets": {"scoring_speedup_ge_1.6": speed["speedup"] >= 1.6, "scores_identical_across_actor_counts": identical},
            "seconds": time.perf_counter() - started}


def _run_in(
    root: Path, args: argparse.Namespace, proxy: dict, train: dict, methods: list[str], rates: list[float], seeds: int
) -> dict[str, Any]:
    load_at_start = list(os.getloadavg())
    source = _materialise(args.data, root, n=args.n)
    started = time.perf_counter()
    scores_dir = root / "scores"
    scoring = score_dataset(str(source), 2, scores_dir, **proxy)
    t0 = time.perf_counter()
    chosen, tuning, tuning_cpu = _tune(source, scores_dir, methods, rates, train)
    tuning_seconds = time.perf_counter() - t0
    sels = _selections(methods, rates, chosen)
    identical = _identical_across_shards(scores_dir, root, sels)
    d2_methods = [m for m in methods if m.startswith("d2")]
    d2_info = _d2(source, scores_dir, root, d2_methods, rates, seeds) if d2_methods else {}
    identical.update(d2_info.pop("identical", {}))
    common = {"test_fraction": 0.2, "split_seed": 0, **train}
    refs: dict[tuple[str, float, int], Any] = {}
    select_seconds: dict[str, float] = {}
    by_method: dict[str, list[dict[str, Any]]] = {}
    for sel in sels:
        by_method.setdefault(_name(sel).rsplit("-keep", 1)[0], []).append(sel)
    for seed in range(seeds):
        for method, group in by_method.items():  # one call per method: its selection seconds (2 shards, every rate)
            t = time.perf_counter()
            select_distributed(scores_dir, 2, [selection_request(s) for s in group], root / f"sel-{seed}", seed=seed)
            select_seconds[method] = select_seconds.get(method, 0.0) + (time.perf_counter() - t) / seeds
            for sel in group:
                refs[(method, sel["keep"], seed)] = _evaluate(source, str(root / f"sel-{seed}" / _name(sel)), common, seed)
        if "rs2" in methods:
            for r in rates:
                refs[("rs2", r, seed)] = _evaluate(source, None, common, seed, rs2_keep=r)
        for m in d2_methods:
            for r in rates:
                name = selection_name("d2", r, parse_method(m)["score"], parse_method(m)["class_balanced"])
                refs[(m, r, seed)] = _evaluate(source, str(root / f"d2-{seed}" / name), common, seed)
        refs[("full", 1.0, seed)] = _evaluate(source, None, common, seed)
    keys = list(refs)
    results = dict(zip(keys, ray.get([refs[k] for k in keys])))
    per_seed = {f"{m}-keep{r:g}": [results[(m, r, s)]["accuracy"] for s in range(seeds)] for m in methods for r in rates}
    per_seed["full"] = [results[("full", 1.0, s)]["accuracy"] for s in range(seeds)]
    verdict = coreset_checks.summarise(per_seed, results[("full", 1.0, 0)]["majority"])
    accuracy = {m: {str(r): verdict["accuracy"][f"{m}-keep{r:g}"] for r in rates} for m in methods}
    eval_cpu = {m: sum(results[(m, r, s)]["cpu_seconds"] for r in rates for s in range(seeds)) for m in methods}
    cost = {m: {"scoring_epochs": proxy["models"] * proxy["epochs"] if m not in ("random", "random-cb", "rs2") else 0,
                "proxy_cpu_seconds": scoring["proxy_cpu_seconds"] if m not in ("random", "random-cb", "rs2") else 0.0,
                "beta_tuning_cpu_seconds": round(tuning_cpu.get(m, 0.0), 2),
                "selection_seconds": round(select_seconds.get(m, d2_info.get("selection_seconds_per_seed", {}).get(m, 0.0)), 2),
                **({"graph_seconds": round(d2_info["graph_seconds"], 2)} if m.startswith("d2") else {}),
                "evaluation_cpu_seconds": round(eval_cpu[m], 2)} for m in methods}
    report = {
        "data": args.data, "n": args.n, "seeds": seeds, "rates": rates, "quick": bool(args.quick), "proxy": proxy,
        "train": train, "default_method": DEFAULT_METHOD, "accuracy": accuracy, "full_accuracy": verdict["accuracy"]["full"],
        "majority_rate": verdict["majority"], "significance_test": verdict["test"], "warning": verdict["warning"],
        "chosen_beta": {m: {str(r): chosen[(m, r)]["beta"] for r in rates} for m in {m for m, _ in chosen}},
        "chosen_balance": {m: {str(r): "cb" if chosen[(m, r)]["class_balanced"] else "plain" for r in rates}
                           for m in {m for m, _ in chosen} if parse_method(m)["class_balanced"] == AUTO},
        "fallback_to_random": sorted(_name(s) for s in sels if s.get("fallback")),
        "beta_tuning_validation_accuracy": tuning, "beta_tuning_seconds": tuning_seconds,
        "scoring_seconds": scoring["seconds"], "cost": cost,
        "selection_identical_across_shards": identical,
        "d2": d2_info or None,
        "load_average_at_start": load_at_start, "load_average_at_end": list(os.getloadavg()),
        "seconds": time.perf_counter() - started,
    }
    report.update(_targets(accuracy, rates, identical))
    return report


def _targets(acc: dict[str, Any], rates: list[float], identical: dict[str, bool]) -> dict[str, Any]:
    """The issue's keys and targets, evaluated honestly on this run's numbers."""
    out: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    if DEFAULT_METHOD in acc and "random" in acc:
        for r in rates:
            d, ref = acc[DEFAULT_METHOD][str(r)], acc["random"][str(r)]
            out[f"default_method_minus_random_at_keep_{r:g}"] = d["mean"] - ref["mean"]
            out[f"pooled_std_at_keep_{r:g}"] = d["pooled_std"]
            out[f"default_method_vs_random_p_value_at_keep_{r:g}"] = d["p_value"]
        if 0.1 in rates:
            targets["keep0.1_default_minus_random_ge_one_pooled_std"] = (
                out["default_method_minus_random_at_keep_0.1"] >= out["pooled_std_at_keep_0.1"])
        for r in (0.3, 0.5):
            if r in rates:
                targets[f"keep{r:g}_default_above_random"] = out[f"default_method_minus_random_at_keep_{r:g}"] > 0
    if "topk-el2n" in acc and "random" in acc and 0.1 in rates:
        gap = acc["random"]["0.1"]["mean"] - acc["topk-el2n"]["0.1"]["mean"]
        out["topk_minus_random_at_keep_0.1"] = -gap
        targets["keep0.1_topk_hardest_collapses"] = gap > 0.05  # far below random, as the CCS paper found
    targets["selection_identical_across_shards"] = all(identical.values())
    out["targets"] = targets
    return out


def _print_table(report: dict[str, Any]) -> None:
    rates = report["rates"]
    print(f"\ncoreset benchmark on {report['data']} ({report['seeds']} seeds), final test accuracy mean ± std"
          f" (▲/▼: differs from random, {report['significance_test']})")
    print(f"{'method':<16}" + "".join(f"{'keep ' + str(r):>22}" for r in rates))
    for method, by_rate in report["accuracy"].items():
        cells = ""
        for r in rates:
            e = by_rate[str(r)]
            mark = (" ▲" if e.get("difference", 0) > 0 else " ▼") if e.get("significant") else "  "
            cells += f"{e['mean']:>13.4f} ± {e['std']:.3f}{mark}"
        print(f"{method:<16}{cells}")
    f = report["full_accuracy"]
    print(f"{'full data':<16}{f['mean']:>13.4f} ± {f['std']:.3f}")
    print("chosen β:", json.dumps(report["chosen_beta"]))
    print("chosen class balance:", json.dumps(report.get("chosen_balance", {})))
    print("selection identical across 1/2/4 shards:", json.dumps(report["selection_identical_across_shards"]))
    print("targets:", json.dumps(report["targets"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_coreset", description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(SETTINGS), default="mnist5k")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--n", type=int, default=None, help="rows of a generated dataset (mnist1d only)")
    parser.add_argument("--rates", type=float, nargs="+", default=RATES,
                        help="keep rates (split a long study into runs that each fit a lock window)")
    parser.add_argument("--scoring-only", action="store_true", help="only scoring throughput and identity")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.n is not None and (args.data != "mnist1d" or args.n < 100):
        parser.error("--n needs --data mnist1d and at least 100 rows")
    for m in args.methods:
        if m != "rs2":
            parse_method(m)
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
