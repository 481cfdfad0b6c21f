"""A report stage for the index, coreset and srrw pipelines, drawn only from committed stage outputs.

Each writes report.md, report.html (figures embedded as base64 PNG, no network needed) and the PNGs;
the CLI copies them into runs/runs/<run id>/ and `--export` puts report.html at the export's top.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads

from shardwalk.core.index import hnsw
from shardwalk.core.storage.files import read_manifest
from shardwalk.core.storage.sources import read_table
from shardwalk.pipelines.common import read_label_map
from shardwalk.pipelines.reports.demo import _accuracy_section as accuracy_section
from shardwalk.pipelines.reports.demo import seed_verdict, warnings_section
from shardwalk.pipelines.reports.render import (
    Section,
    figure,
    save_figure,
    series_style,
    value_ticks,
    write_report,
)


def _parts(directory: Path, columns: list[str] | None = None):
    return pads.dataset(str(directory), format="parquet").to_table(columns=columns)


# ----------------------------------------------------------------------------- index


def _recall_section(out: Path, evaluate: Path) -> Section:
    recall = json.loads((evaluate / "recall.json").read_text())
    rows = recall.get("recall_vs_ef", [])
    fig, ax = figure()
    ax.plot([r["ef"] for r in rows], [r["recall_at_k"] for r in rows], marker="o")
    ax.axvline(recall["ef"], color="k", ls="--", lw=1, label=f"configured ef = {recall['ef']}")
    ax.set(xlabel="ef (search breadth)", ylabel=f"recall@{recall['k']} vs exact search", xscale="log",
           title="Recall vs ef")
    value_ticks(ax, [r["ef"] for r in rows])
    ax.legend(fontsize=8)
    text = (f"Recall@{recall['k']} of the sharded index against brute-force search on {recall['sample']} "
            "sampled points, for several ef. Higher ef: better recall, slower queries.")
    return Section("Recall vs ef", text, save_figure(fig, out, "recall_vs_ef.png"), rows)


def _shard_axis(ax: Any, shards: int) -> None:
    """One tick per shard, whole numbers only, and room either side (one shard is not an axis from −0.4 to 0.4)."""
    ax.set_xticks(range(shards), [str(i) for i in range(shards)])
    ax.set_xlim(-0.75, max(shards, 1) - 0.25)
    ax.set_xlabel("shard")


def shard_sections(out: Path, build: Path) -> list[Section]:
    meta = json.loads((build / hnsw.INDEX_FILE).read_text())
    sizes = meta.get("shard_sizes", [])
    fig, ax = figure()
    ax.bar(range(len(sizes)), sizes, width=0.6)
    if sizes:
        ax.axhline(np.mean(sizes), color="k", ls="--", lw=1, label="mean")
        ax.legend(fontsize=8)
    _shard_axis(ax, len(sizes))
    ax.set(ylabel="live vectors", title="Shard balance")
    one = " One shard: nothing to balance." if len(sizes) == 1 else ""
    balance = Section("Shard balance", f"Vectors per shard ({meta.get('partition', '?')} partition).{one}",
                      save_figure(fig, out, "shard_balance.png"))
    shard_bytes = [(build / hnsw.shard_file(i)).stat().st_size if (build / hnsw.shard_file(i)).is_file() else 0
                   for i in range(len(sizes))]
    fig, ax = figure()
    ax.bar(range(len(shard_bytes)), np.asarray(shard_bytes) / 2**20, width=0.6)
    _shard_axis(ax, len(shard_bytes))
    ax.set(ylabel="MiB", title="Index memory per shard (hnswlib file size)")
    per_vector = sum(shard_bytes) / max(sum(sizes), 1)
    memory = Section("Memory", f"Each shard's hnswlib index (vectors + graph), about {per_vector:.0f} bytes per vector; "
                     "an actor holds its shard in memory.", save_figure(fig, out, "index_memory.png"),
                     [{"shard": i, "vectors": n, "bytes": b} for i, (n, b) in enumerate(zip(sizes, shard_bytes))])
    return [balance, memory]


def _distance_section(out: Path, graph: Path) -> Section:
    distances = _parts(graph, ["distances"]).column("distances").combine_chunks()
    first = np.asarray(distances.values.to_numpy(zero_copy_only=False)).reshape(len(distances), -1)[:, 0]
    fig, ax = figure()
    ax.hist(first, bins=60)
    ax.set(xlabel="distance to the nearest neighbour", ylabel="points", title="kNN graph: nearest-neighbour distances")
    return Section("kNN graph", "Distances are squared L2 (space l2), 1 − inner product (ip) or 1 − cosine (cosine).",
                   save_figure(fig, out, "knn_distances.png"))


def index_report(out: Path, build: Path, evaluate: Path, graph: Path | None = None) -> dict[str, Any]:
    """Recall vs ef, shard balance, memory per shard (and kNN distances when the graph was built)."""
    sections = [_recall_section(out, evaluate), *shard_sections(out, build)]
    if graph is not None:
        sections.append(_distance_section(out, graph))
    write_report(out, "shardwalk index report", "Sharded HNSW index: quality, balance and memory.", sections)
    return {"figures": sum(1 for s in sections if s.figure)}


# ----------------------------------------------------------------------------- coreset


def balance_section(out: Path, scores: Path, select: Path, values: np.ndarray | None) -> Section:
    table = _parts(scores, ["id", "label"])
    ids, labels = table.column("id").to_numpy(), table.column("label").to_numpy()
    classes = np.unique(labels)
    names = sorted(p.name for p in select.iterdir() if p.is_dir())
    shares = [np.bincount(labels, minlength=classes.max() + 1)[classes] / len(labels)]
    for name in names:
        kept = labels[np.isin(ids, _parts(select / name, ["id"]).column("id").to_numpy())]
        shares.append(np.bincount(kept, minlength=classes.max() + 1)[classes] / max(len(kept), 1))
    fig, ax = figure(7.0, 0.35 * len(shares) + 2.0)
    left = np.zeros(len(shares))
    for c, cls in enumerate(classes):
        width = np.array([s[c] for s in shares])
        ax.barh(range(len(shares)), width, left=left, label=str(values[cls] if values is not None else cls))
        left += width
    ax.set_yticks(range(len(shares)), ["all training rows", *names], fontsize=7)
    ax.set(xlabel="share of the coreset", title="Class balance of each coreset")
    ax.legend(fontsize=7, ncols=min(len(classes), 10), loc="lower center", bbox_to_anchor=(0.5, 1.08))
    one = (f" The training rows hold one class ({values[classes[0]] if values is not None else classes[0]}): every "
           "coreset is all of it." if len(classes) == 1 else "")
    return Section("Class balance", "Share of each class (your label values) in the training rows and in each "
                   "coreset; a class missing from a coreset is flagged in the select stage's warning." + one,
                   save_figure(fig, out, "class_balance.png"))


def _score_sections(out: Path, scores: Path) -> list[Section]:
    table = _parts(scores)
    sections = []
    for name in ("el2n", "aum", "forgetting", "entropy"):
        if name not in table.column_names:
            continue
        fig, ax = figure(6.4, 3.2)
        ax.hist(table.column(name).to_numpy(), bins=60)
        ax.set(xlabel=name, ylabel="training examples", title=f"Score histogram: {name}")
        sections.append(Section(f"Scores: {name}", "", save_figure(fig, out, f"score_{name}.png")))
    return sections


def coreset_report(out: Path, ingest: Path, scores: Path, select: Path, evaluate: Path | None = None) -> dict[str, Any]:
    """Accuracy vs keep per method, class balance of each coreset, score histograms."""
    sections = [balance_section(out, scores, select, read_label_map(ingest)), *_score_sections(out, scores)]
    if evaluate is not None:
        sections.insert(0, accuracy_section(out, evaluate, select)[0])  # the demo's figure and table, same data
    warned = warnings_section(seed_verdict(evaluate) if evaluate is not None else None, scores)
    if warned is not None:
        sections.insert(0, warned)  # first: a result that means nothing must not be read as one
    write_report(out, "shardwalk coreset report", "Coreset selection: what each coreset keeps and how well it trains.",
                 sections)
    return {"figures": sum(1 for s in sections if s.figure)}


# ----------------------------------------------------------------------------- srrw


def srrw_report(out: Path, walk: Path, evaluate: Path) -> dict[str, Any]:
    """‖θ−θ*‖² and loss / training and held-out accuracy along the walk, visits vs the target measure."""
    curves = read_table(evaluate / "curves.parquet").to_pandas()
    fig, ax = figure()
    for i, (token, c) in enumerate(curves.groupby("token")):
        ax.plot(c["step"].clip(lower=1), c["sq_error"], label=f"token {token}", markevery=0.1, **series_style(i))
    ax.set(xscale="log", yscale="log", xlabel="steps", ylabel="‖θ_n − θ*‖²", title="Optimisation error")
    ax.legend(fontsize=8)
    error = Section("Error", "Distance to the exact optimum θ* (Newton); the run's `sq_error_last_quarter` averages "
                    "the last quarter of these snapshots.", save_figure(fig, out, "srrw_error.png"))
    fig, (ax_loss, ax_acc) = figure(10.0, 4.0, cols=2)
    for i, (token, c) in enumerate(curves.groupby("token")):
        style = {**series_style(i), "markevery": 0.1}
        ax_loss.plot(c["step"].clip(lower=1), c["loss"], label=f"token {token}", **style)
        ax_acc.plot(c["step"].clip(lower=1), c["accuracy"], label=f"token {token}, training", **style)
        if "test_accuracy" in c and c["test_accuracy"].notna().any():
            ax_acc.plot(c["step"].clip(lower=1), c["test_accuracy"], label=f"token {token}, held-out",
                        **{**style, "ls": ":"})
    metrics = read_manifest(evaluate).get("metrics", {})
    if "loss_star" in metrics:
        ax_loss.axhline(metrics["loss_star"], color="k", ls="--", lw=1, label="loss*")
    ax_loss.set(xscale="log", xlabel="steps", ylabel="loss", title="Loss")
    for ax in (ax_loss, ax_acc):  # a loss within 1e-4 of loss* read "7.5" under "1e-5+2.001e-1": whole values instead
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax_acc.set(xscale="log", xlabel="steps", ylabel="accuracy", title="Training (agents' data) and held-out accuracy")
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=8)
    loss = Section("Loss and accuracy", "Training accuracy is on the agents' own data; held-out accuracy on the "
                   "rows placed on no agent (`test_fraction`).", save_figure(fig, out, "srrw_loss.png"))
    visits = read_table(walk / "visits.parquet").to_pandas()
    fig, ax = figure(8.0, 3.6)
    for token, v in visits.groupby("token"):
        v = v.sort_values("node")
        ax.plot(v["node"], v["visit"] * len(v), marker=".", lw=0.8, label=f"token {token}")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="target (uniform)")
    ax.set(xlabel="agent", ylabel="visit measure × N", title="Visits vs target")
    ax.legend(fontsize=8)
    where = Section("Visits", "The walk's empirical visit measure relative to its target.",
                    save_figure(fig, out, "srrw_visits.png"))
    tokens = crossing_section(out, read_table(walk / "tokens.parquet"), read_manifest(walk).get("metrics", {}))
    write_report(out, "shardwalk srrw report", "SA-SRRW training over agents.", [error, loss, where, tokens])
    return {"figures": 4}


def crossing_section(out: Path, tokens: Any, metrics: dict[str, Any]) -> Section:
    """Tokens crossing walker actors (hand-offs per token, the walk's crossing figures) and the spread of
    the tokens' final models around their average (the walk's result)."""
    keys = np.asarray(tokens.column("token").to_pylist(), dtype=np.int64)
    handoffs = np.asarray(tokens.column("handoffs").to_pylist(), dtype=np.float64)
    steps = np.asarray(tokens.column("steps").to_pylist(), dtype=np.float64)
    thetas = np.asarray(tokens.column("theta").to_pylist(), dtype=np.float64).reshape(len(keys), -1)
    spread = np.linalg.norm(thetas - thetas.mean(axis=0), axis=1)
    fig, (ax_hand, ax_spread) = figure(10.0, 3.6, cols=2)
    ax_hand.bar(keys, 1000.0 * handoffs / np.maximum(steps, 1.0), width=0.8)
    ax_hand.set(xlabel="token", ylabel="hand-offs per 1,000 hops", title="Tokens crossing walker actors")
    ax_spread.bar(keys, spread, width=0.8, color="tab:orange")
    ax_spread.set(xlabel="token", ylabel="‖θ_k − θ̄‖", title="Final models around their average θ̄")
    layout = metrics.get("layout", "?")
    figures = {"hand-offs": "handoffs", "per 1,000 hops": "handoffs_per_1000_hops", "bytes per crossing":
               "bytes_per_crossing", "hops per actor CPU-second": "hops_per_actor_cpu_second",
               "cut edges": "cut_fraction", "halo": "halo"}
    said = ", ".join(f"{name} {metrics[key]:,}" for name, key in figures.items() if key in metrics)
    text = (f"Layout `{layout}`: {len(keys)} token(s) walked {int(steps.sum()):,} hops in all and crossed between "
            f"walker actors {int(handoffs.sum()):,} times ({said or 'no walk metrics recorded'}). A crossing carries "
            "θ, the token's stream and step, and only the visit-measure entries other actors also read; in the "
            "replicate layout tokens never cross. The result is the tokens' average θ̄; the right panel is each "
            f"token's distance to it (spread across tokens {float(np.linalg.norm(thetas.std(axis=0))):.4g}).")
    return Section("Tokens crossing actors", text, save_figure(fig, out, "srrw_tokens.png"),
                   [{"token": int(k), "steps": int(n), "handoffs": int(h), "distance_to_average": float(d)}
                    for k, n, h, d in zip(keys, steps, handoffs, spread)][:64])


# ----------------------------------------------------------------------------- ingest


def ingest_report(out: Path, summary: Path) -> dict[str, Any]:
    """Class counts (your label values) and per-dimension mean, spread and range of the ingested vectors."""
    info = json.loads((summary / "summary.json").read_text())
    stats = read_table(summary / "dim_stats.parquet").to_pandas()
    sections = []
    counts = info.get("label_counts", {})
    fig, ax = figure()
    ax.bar(range(len(counts)), list(counts.values()))
    ax.set_xticks(range(len(counts)), list(counts), fontsize=7, rotation=90 if len(counts) > 20 else 0)
    ax.set(xlabel="label (your values)", ylabel="rows", title="Class counts" if counts else "No label column")
    sections.append(Section("Labels", f"{info.get('classes', 0)} classes, mapped to 0…K−1 at ingest (labels.json).",
                            save_figure(fig, out, "label_counts.png")))
    fig, ax = figure()
    ax.errorbar(stats["dim"], stats["mean"], yerr=stats["std"], fmt=".", lw=0.6)
    ax.set(xlabel="dimension", ylabel="mean ± std", title="Per-dimension mean and spread")
    sections.append(Section("Scale", "Features on very different scales slow gradient methods (see SRRW's "
                            "`standardize`).", save_figure(fig, out, "dim_mean_std.png")))
    fig, ax = figure()
    ax.fill_between(stats["dim"], stats["min"], stats["max"], alpha=0.4)
    ax.set(xlabel="dimension", ylabel="value", title="Per-dimension range (min to max)")
    sections.append(Section("Range", f"Vector norms: mean {info['norm_mean']:.4g}, std {info['norm_std']:.4g}.",
                            save_figure(fig, out, "dim_range.png")))
    write_report(out, "shardwalk ingest report", f"{info['rows']} vectors of dimension {info['dim']}.", sections)
    return {"figures": len(sections)}
