"""The demo's report: five figures a user wants to see, a headline table, and where each number came from."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from shardwalk.core.coresets import checks as coreset_checks
from shardwalk.core.coresets.checks import KEEP_RE
from shardwalk.core.storage.sources import read_table
from shardwalk.pipelines.reports.render import (
    Section,
    coinciding_note,
    figure,
    save_figure,
    series_style,
    value_ticks,
    write_report,
)


def _sweep_section(out: Path, sweep: Path) -> tuple[Section, dict[str, Any]]:
    table = read_table(sweep / "sweep.parquet").to_pandas()
    fig, ax = figure()
    for shards, group in table.groupby("shards"):
        group = group.sort_values("ef")
        ax.plot(group["recall"], group["qps"], marker="o", label=f"{shards} shard(s)")
        for _, row in group.iterrows():
            ax.annotate(f"ef={int(row['ef'])}", (row["recall"], row["qps"]), fontsize=7, alpha=0.7)
    ax.set(xlabel="recall@10 (vs exact search)", ylabel="queries / second (batched)", yscale="log",
           title="Sharded HNSW: recall vs throughput")
    ax.legend()
    at_default = table[table["ef"] == table["ef"].median()] if 64 not in set(table["ef"]) else table[table["ef"] == 64]
    rows = [{"shards": int(r.shards), "ef": int(r.ef), "recall@10": float(r.recall), "qps": float(r.qps),
             "build s": float(r.build_seconds)} for r in table.itertuples()]
    headline = {"index recall@10 (ef=64)": float(at_default["recall"].mean())}
    text = ("Each shard count is a ShardedIndex on Ray actors; every point is one batched search of the same "
            "queries at one ef, scored against brute-force search. On one 2-core machine more shards add "
            "Ray round-trips rather than cores, so the curves show the price of distribution here; on a "
            "cluster each shard brings its own CPUs.")
    return Section("Index: recall vs queries per second", text, save_figure(fig, out, "index_sweep.png"), rows), headline


def _selection_ids(select: Path, name: str) -> np.ndarray:
    return read_table(select / name, ["id"]).column("id").to_numpy()


def _score_section(out: Path, scores: Path, select: Path, name: str, beta: float = 0.0, balance: str = "") -> Section:
    score = "aum" if "aum" in name else "el2n"
    table = pads.dataset(str(scores), format="parquet").to_table(columns=["id", score])
    values = table.column(score).to_numpy()
    chosen = np.isin(table.column("id").to_numpy(), _selection_ids(select, name))
    # AUM: low = hard, so the hard cutoff drops the lowest β·N; other scores drop the highest.
    hard_low = score == "aum"
    cut = np.quantile(values, beta if hard_low else 1 - beta) if beta > 0 else (values.min() if hard_low else values.max())
    lo, hi = (cut, values.max()) if hard_low else (values.min(), cut)
    fig, ax = figure(7.0, 4.0)
    bins = np.linspace(values.min(), values.max(), 80)
    ax.hist(values, bins=bins, color="#bbbbbb", label=f"all training examples ({len(values)})")
    ax.hist(values[chosen], bins=bins, color="#1f77b4", alpha=0.85, label=f"{name} ({int(chosen.sum())})")
    for edge in np.linspace(lo, hi, 51):
        ax.axvline(edge, color="#1f77b4", alpha=0.12, lw=0.6)
    if beta > 0:
        ax.axvline(cut, color="#d62728", lw=2, label=f"hard cutoff: β = {beta:.2f}")
    ax.set(xlabel=f"{score} ({'low' if hard_low else 'high'} = hard)", ylabel="examples", title="CCS: score histogram, strata and cutoff")
    ax.legend(fontsize=8)
    text = (f"CCS drops the hardest β·N examples, splits the rest into 50 strata of equal width in {score} (faint "
            "lines) and spends the budget smallest stratum first, so easy, medium and hard examples all stay "
            f"covered. Blue: the examples actually selected by {name} (β = {beta:g}"
            + {"cb": ", class-balanced: cut and strata within each class, as β tuning chose",
               "plain": ", not class-balanced, as β tuning chose"}.get(balance, "") + ").")
    return Section("Coreset: what CCS keeps", text, save_figure(fig, out, "score_histogram.png"))


def seed_verdict(evaluate: Path) -> dict[str, Any]:
    """The evaluate stage's verdict (accuracy_seeds.json: mean ± std, comparison with random, warning);
    an older output with only accuracy.json reads as one seed each."""
    seeds = evaluate / "accuracy_seeds.json"
    if seeds.exists():
        return json.loads(seeds.read_text())
    means = json.loads((evaluate / "accuracy.json").read_text())
    return coreset_checks.summarise({k: [v] for k, v in means.items()}, majority=0.0)


def beat_random(verdict: Mapping[str, Any]) -> str:
    """One sentence: which method beat random at which keep and by how much, with the spread and the test."""
    acc = verdict["accuracy"]
    compared = [(n, e) for n, e in acc.items() if "versus" in e]
    if not compared:
        return "no coreset was compared with a random one of the same size (add `random` to select.methods)"
    wins = [(n, e) for n, e in compared if e["significant"] and e["difference"] > 0]
    name, e = max(wins or compared, key=lambda ne: ne[1]["difference"])
    ref = acc[e["versus"]]
    match = KEEP_RE.match(name)
    where = f"{match['method']} at keep {match['keep']}" if match else name
    test = verdict.get("test", coreset_checks.TEST).split(",")[0]
    tested = f"{test}: p = {e['p_value']:.3g}" if e["p_value"] is not None else "not testable: no spread or one seed"
    numbers = f"{e['mean']:.4f} ± {e['std']:.4f} vs {ref['mean']:.4f} ± {ref['std']:.4f}, {e['n']} seeds, {tested}"
    if wins:
        return f"{where} beat random by {e['difference']:+.4f} ({numbers})"
    return f"no method beat random significantly; the largest difference is {where}, {e['difference']:+.4f} ({numbers})"


def warnings_section(verdict: Mapping[str, Any] | None, scores: Path | None) -> Section | None:
    """The results that mean nothing as they are, first thing in the report (None when there is none)."""
    found = [verdict["warning"]] if verdict and verdict.get("warning") else []
    if scores is not None:
        table = pads.dataset(str(scores), format="parquet").to_table()
        columns = {c: table.column(c).to_numpy() for c in ("el2n", "forgetting", "aum", "entropy") if c in table.column_names}
        found += [w for w in [coreset_checks.scores_warning(columns)] if w]
    if not found:
        return None
    return Section("Warnings", "Do not trust the results below as they are:\n\n" + "\n".join(f"- {w}" for w in found))


def fallback_note(select: Path | None) -> str:
    """The CCS selections that β tuning replaced by random (no β beat random on the validation rows), as a sentence."""
    path = None if select is None else select / "selections.json"
    if path is None or not path.exists():
        return ""
    fell = {n: e["fallback"] for n, e in sorted(json.loads(path.read_text()).items()) if e.get("fallback")}
    if not fell:
        return ""
    listed = "; ".join(f"{n} is {f}" for n, f in fell.items())
    return (f" Selected at random because the best β did not beat random on the validation rows on every fit "
            f"(the tuning fit and its refits with fresh seeds; `select.beta = \"auto\"`): {listed}.")


def tuning_note(select: Path | None) -> str:
    """The β each CCS selection used, and the class balance β tuning chose for each `ccs-SCORE-auto` one, as a
    sentence (from selections.json)."""
    path = None if select is None else select / "selections.json"
    if path is None or not path.exists():
        return ""
    used = []
    for name, entry in sorted(json.loads(path.read_text()).items()):
        if not name.startswith("ccs") or not ("beta" in entry or "balance" in entry):
            continue
        what = f"β = {entry['beta']:g}" if "beta" in entry else f"{entry.get('fallback', 'random')} (no β beat it)"
        if "balance" in entry:
            what += ", class-balanced" if entry["balance"] == "cb" else ", plain (not class-balanced)"
        used.append(f"{name}: {what}")
    if not used:
        return ""
    return (" CCS settings per selection (`select.beta`; a `-auto` method's class balance chosen with β on the "
            "validation rows): " + "; ".join(used) + ".")


def _accuracy_section(out: Path, evaluate: Path, select: Path | None = None) -> tuple[Section, dict[str, Any]]:
    verdict = seed_verdict(evaluate)
    acc = dict(verdict["accuracy"])
    full = acc.pop("full")
    curves: dict[str, dict[float, dict[str, Any]]] = {}
    for name, entry in acc.items():
        match = KEEP_RE.match(name)
        if match:
            curves.setdefault(match["method"], {})[float(match["keep"])] = entry
    fig, ax = figure()
    for i, (method, points) in enumerate(sorted(curves.items())):
        keeps = sorted(points)
        ax.errorbar(keeps, [points[k]["mean"] for k in keeps], yerr=[points[k]["std"] for k in keeps], capsize=3,
                    label=method, **series_style(i))
    ax.axhline(full["mean"], color="k", ls="--", label=f"full data ({full['mean']:.3f})")
    ax.set(xlabel="keep fraction", ylabel="test accuracy (end of training)", xscale="log",
           title=f"Accuracy vs coreset size (mean ± std, {full['n']} seeds)")
    keeps = sorted({k for points in curves.values() for k in points})
    value_ticks(ax, keeps)
    ax.legend(fontsize=8)

    def cell(e: Mapping[str, Any] | None) -> str:
        if e is None:
            return ""
        mark = (" ▲" if e["difference"] > 0 else " ▼") if e.get("significant") else ""
        if untestable(e):
            mark = " †"
        return f"{e['mean']:.4f} ± {e['std']:.4f}{mark}"

    def untestable(e: Mapping[str, Any]) -> bool:  # compared with random, different, but no test was possible
        return bool(e.get("versus")) and e.get("p_value") is None and abs(e.get("difference", 0.0)) > coreset_checks.TIE

    untested = any(untestable(p[k]) for p in curves.values() for k in p)

    rows = [{"method": m, **{f"keep {k:g}": cell(points.get(k)) for k in keeps}} for m, points in sorted(curves.items())]
    rows.append({"method": "full data", **{f"keep {k:g}": cell(full) for k in keeps}})
    low = min(keeps)
    best_ccs = max((p[low]["mean"] for m, p in curves.items() if m.startswith("ccs") and low in p), default=float("nan"))
    headline = {"full-data accuracy": full["mean"], f"best CCS accuracy at keep {low:g}": best_ccs,
                f"random accuracy at keep {low:g}": curves.get("random", {}).get(low, {}).get("mean", float("nan")),
                "versus random": beat_random(verdict)}
    text = (f"A fresh model trained for the same number of steps on each coreset (as in the CCS paper), final test "
            f"accuracy on a held-out split: mean ± sample std over {full['n']} training seed(s). ▲/▼: the "
            f"difference from a random coreset of the same size is significant ({verdict.get('test', coreset_checks.TEST)}); "
            "unmarked differences are within the spread. "
            + ("†: every seed of it and of random scored alike (or one seed), so no test is possible; read the means. "
               if untested else "") + beat_random(verdict) + "." + fallback_note(select) + tuning_note(select) + coinciding_note(
                {m: [p[k]["mean"] if k in p else float("nan") for k in keeps] for m, p in sorted(curves.items())}))
    return Section("Coreset: accuracy vs keep rate", text, save_figure(fig, out, "accuracy_vs_keep.png"), rows), headline


def _alpha_of(tag: str) -> str:
    return tag.rsplit("_a", 1)[1].replace("_", ".")


def _srrw_sections(out: Path, walks: Mapping[str, Path]) -> tuple[list[Section], dict[str, Any]]:
    fig, (ax_err, ax_acc) = figure(10.0, 4.0, cols=2)
    rows, headline = [], {}
    for i, key in enumerate(sorted(k for k in walks if k.startswith("curves_"))):
        tag = key[len("curves_"):]
        role, alpha = tag.split("_a")[0], _alpha_of(tag)
        curve = read_table(walks[key] / "curves.parquet").to_pandas()
        test = read_table(walks[f"test_{tag}"] / "test_curve.parquet").to_pandas()
        label = f"{role}, α = {alpha}"
        ax_err.plot(curve["step"].clip(lower=1), curve["sq_error"], label=label, markevery=0.1, **series_style(i))
        ax_acc.plot(test["step"].clip(lower=1), test["test_accuracy"], label=label, markevery=0.1, **series_style(i))
        final = curve.iloc[-1]
        rows.append({"data": role, "alpha": float(alpha), "‖θ−θ*‖²": float(final["sq_error"]),
                     "train loss": float(final["loss"]), "test accuracy": float(test.iloc[-1]["test_accuracy"])})
        headline[f"SRRW ‖θ−θ*‖² ({label})"] = float(final["sq_error"])
    for ax in (ax_err, ax_acc):
        ax.set(xscale="log", xlabel="steps (agents visited)")
        ax.legend(fontsize=8)
    ax_err.set(yscale="log", ylabel="‖θ_n − θ*‖²", title="Optimisation error")
    ax_acc.set(ylabel="held-out accuracy", title="Test accuracy of the token's model")
    curves_section = Section(
        "SRRW: training the model on agents", (
            "One token (the model) walks over the agents' graph and takes a gradient step on each visited "
            "agent's local data. The self-repellent walk (α > 0) avoids over-visited agents; Hu, Doshi & Eun "
            "(ICLR 2024) show its asymptotic error covariance shrinks as O(1/α²). θ* is the exact minimiser "
            "(Newton) of the same L2-regularised logistic loss over the coreset."),
        save_figure(fig, out, "srrw_curves.png"), rows)
    fig, ax = figure(8.0, 3.6)
    for key in sorted(k for k in walks if k.startswith("walk_coreset")):
        visits = read_table(walks[key] / "visits.parquet").to_pandas().sort_values("node")
        ax.plot(visits["node"], visits["visit"] * len(visits), marker=".", lw=0.8, label=f"α = {_alpha_of(key)}")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="target μ (uniform)")
    ax.set(xlabel="agent", ylabel="visit measure × N", title="Where the token went")
    ax.legend(fontsize=8)
    visits_section = Section(
        "SRRW: visits per agent", (
            "The walk's empirical visit measure x_n relative to its uniform target. The base walk (α = 0) "
            "lingers on some agents and neglects others; the self-repellent walk stays close to uniform."),
        save_figure(fig, out, "srrw_visits.png"))
    return [curves_section, visits_section], headline


def write_demo_report(out: Path, *, summary: Path, sweep: Path, scores: Path, select: Path, evaluate: Path,
                      walks: Mapping[str, Path], extra: Sequence[Section] = (),
                      extra_headline: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build every figure from the committed stage outputs and write the report files."""
    info = json.loads((summary / "summary.json").read_text())
    sweep_section, h_index = _sweep_section(out, sweep)
    accuracy_section, h_acc = _accuracy_section(out, evaluate, select)
    selection = json.loads((select / "selections.json").read_text())
    ccs = sorted((n for n in selection if n.startswith("ccs") and n.endswith("keep0.3")),
                 key=lambda n: ("el2n-auto" not in n, "el2n-cb" not in n))  # the default method first
    chosen = (ccs or sorted(selection))[0]
    srrw_sections, h_srrw = _srrw_sections(out, walks)
    headline = {**h_index, **h_acc, **h_srrw, **(extra_headline or {})}
    headline_rows = [{"measure": k, "value": v} for k, v in headline.items()]
    warned = warnings_section(seed_verdict(evaluate), scores)
    sections = [
        *([warned] if warned else []),
        Section("Headline", "The numbers below come from this run; every figure is drawn from committed stage outputs.",
                table=headline_rows),
        sweep_section,
        _score_section(out, scores, select, chosen, float(selection[chosen].get("beta", 0.0)),
                       selection[chosen].get("balance", "")),
        accuracy_section,
        *srrw_sections,
        *extra,
    ]
    intro = (f"{info['rows']} vectors of dimension {info['dim']}, {info['classes']} classes. "
             "Index → kNN graph → coreset scores → CCS selection → SRRW training on the coreset.")
    write_report(out, "shardwalk demo report", intro, sections)
    (out / "headline.json").write_text(json.dumps(headline, indent=1))
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in headline.items()}
