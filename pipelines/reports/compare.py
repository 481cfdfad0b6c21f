"""`shardwalk report RUN [RUN ...] --out FILE.html`: runs of one pipeline side by side in one page.

Curves overlaid (recall vs ef, accuracy vs keep, ‖θ−θ*‖² along the walk), every metric in one table, and
the settings that differ between the runs highlighted. Drawn only from the runs' committed stage outputs
under the runs dir given (a record is data: its `pipeline` only picks which figures to draw).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shardwalk.core.errors import ConfigError
from shardwalk.core.storage import store
from shardwalk.core.storage.files import atomic_file
from shardwalk.core.storage.sources import read_table
from shardwalk.pipelines.export import _outputs
from shardwalk.pipelines.reports.demo import KEEP_RE
from shardwalk.pipelines.reports.render import (
    CSS,
    _pyplot,
    _started,
    coinciding,
    figure,
    series_style,
    value_ticks,
)
from shardwalk.pipelines.runs_view import load_run_ref
from shardwalk.pipelines.settings import flatten, run_warnings, shardwalk_version

HIGHLIGHT = "tr.differs td{background:#fff4c2}tr.differs th{background:#ffe58a}"


def _label(i: int) -> str:
    return string.ascii_uppercase[i] if i < 26 else f"R{i + 1}"


def differing_settings(records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Setting → its value in each run, for the settings that are not the same in every run."""
    flat = [flatten(r.get("config") or {}) for r in records]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    values = {k: [f.get(k, "—") for f in flat] for k in keys}
    return {k: v for k, v in values.items() if any(json.dumps(x, default=str) != json.dumps(v[0], default=str) for x in v)}


def _metrics(records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """`stage.metric` → its value in each run (— where a run lacks it)."""
    flat = []
    for r in records:
        row = {}
        for name, stage in (r.get("stages") or {}).items():
            for key, value in flatten((stage or {}).get("metrics") or {}).items():
                row[f"{name}.{key}"] = value
            cached = (stage or {}).get("status") == "cached"  # its 0 s would read as the fastest run
            row[f"{name}.seconds"] = "cache hit" if cached else (stage or {}).get("seconds")
        flat.append(row)
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return {k: [f.get(k, "—") for f in flat] for k in keys}


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _draw(ax: Any, series: dict[str, list[float]], run: int, name: str, x: Sequence[float], y: Sequence[float],
          **style: Any) -> None:
    """Plot one curve, later runs thinner and with smaller markers so an identical earlier curve shows around
    them, and keep its points for the note naming curves drawn on top of each other."""
    style = {**style, "lw": max(0.8, style.get("lw", 1.4) + 1.2 - 0.8 * run)}
    if "markersize" in style:
        style["markersize"] = style["markersize"] * 0.7**run
    ax.plot(x, y, label=name, **style)
    series[name] = [float(v) for pair in zip(x, y) for v in pair]


def _recall_figure(runs: Sequence[tuple[str, dict[str, Path]]], series: dict[str, list[float]]) -> str | None:
    fig, ax = figure()
    drawn, efs = 0, set()
    for i, (label, outputs) in enumerate(runs):
        path = outputs.get("evaluate", Path("/nonexistent")) / "recall.json"
        if not path.is_file():
            continue
        rows = json.loads(path.read_text()).get("recall_vs_ef", [])
        _draw(ax, series, i, label, [r["ef"] for r in rows], [r["recall_at_k"] for r in rows], **series_style(i))
        efs.update(r["ef"] for r in rows)
        drawn += 1
    ax.set(xlabel="ef (search breadth)", ylabel="recall@k vs exact search", xscale="log", title="Recall vs ef")
    value_ticks(ax, efs)
    return _finish(fig, ax, drawn)


def _accuracy_figure(runs: Sequence[tuple[str, dict[str, Path]]], series: dict[str, list[float]]) -> str | None:
    fig, ax = figure(7.5, 4.5)
    drawn, keeps_drawn = 0, set()
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for i, (label, outputs) in enumerate(runs):
        path = outputs.get("evaluate", Path("/nonexistent")) / "accuracy.json"
        if not path.is_file():
            continue
        accuracy = json.loads(path.read_text())
        curves: dict[str, dict[float, float]] = {}
        for name, value in accuracy.items():
            if (match := KEEP_RE.match(name)) is not None:
                curves.setdefault(match["method"], {})[float(match["keep"])] = value
        for j, (method, points) in enumerate(sorted(curves.items())):
            keeps = sorted(points)
            _draw(ax, series, i, f"{label}: {method}", keeps, [points[k] for k in keeps], color=colors[i], **series_style(j))
            keeps_drawn.update(keeps)
            drawn += 1
        if "full" in accuracy:
            ax.axhline(accuracy["full"], color=colors[i], ls=":", lw=max(0.8, 2.2 - 0.8 * i), label=f"{label}: full data")
            series[f"{label}: full data"] = [float(accuracy["full"])]
    ax.set(xlabel="keep fraction", ylabel="test accuracy", xscale="log", title="Accuracy vs keep (colour: run, marker: method)")
    value_ticks(ax, keeps_drawn)
    return _finish(fig, ax, drawn)


def _walk_figure(runs: Sequence[tuple[str, dict[str, Path]]], series: dict[str, list[float]]) -> str | None:
    fig, ax = figure(7.5, 4.5)
    drawn = 0
    for i, (label, outputs) in enumerate(runs):
        for j, (stage, out) in enumerate(sorted((n, o) for n, o in outputs.items() if (o / "curves.parquet").is_file())):
            curves = read_table(out / "curves.parquet").to_pandas().groupby("step", as_index=False)["sq_error"].mean()
            name = label if stage == "evaluate" else f"{label}: {stage.removeprefix('curves_')}"
            _draw(ax, series, i, name, curves["step"].clip(lower=1).tolist(), curves["sq_error"].tolist(),
                  color=f"C{i % 10}", markevery=0.1, **series_style(j))
            drawn += 1
    ax.set(xscale="log", yscale="log", xlabel="steps", ylabel="‖θ_n − θ*‖² (mean over tokens)", title="Optimisation error")
    return _finish(fig, ax, drawn)


def _finish(fig: Any, ax: Any, drawn: int) -> str | None:
    if not drawn:
        _pyplot().close(fig)
        return None
    ax.legend(fontsize=7)
    return _png(fig)


FIGURES: dict[str, tuple[Callable[..., str | None], ...]] = {
    "index": (_recall_figure,), "coreset": (_accuracy_figure,), "srrw": (_walk_figure,),
    "demo": (_accuracy_figure, _walk_figure),
}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return json.dumps(value) if isinstance(value, list | dict | bool) or value is None else str(value)


def _table(title: str, rows: dict[str, list[Any]], labels: Sequence[str], highlight: bool) -> str:
    head = "".join(f"<th>{html.escape(x)}</th>" for x in ["", *labels])
    body = []
    for key, values in rows.items():
        differs = highlight and len({_cell(v) for v in values}) > 1
        cells = "".join(f"<td>{html.escape(_cell(v))}</td>" for v in values)
        body.append(f"<tr{' class=differs' if differs else ''}><th>{html.escape(key)}</th>{cells}</tr>")
    return f"<h2>{html.escape(title)}</h2><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _coinciding(series: dict[str, list[float]]) -> str:
    """The sentence naming curves of the figures that lie exactly on top of each other ('' when none do)."""
    groups = coinciding(series)
    if not groups:
        return ""
    return ("Identical curves (each later run is drawn thinner and with smaller markers inside the earlier one): "
            + "; ".join(" = ".join(g) for g in groups) + ".")


def compare_runs(runs_dir: str | os.PathLike, refs: Sequence[str], out: str) -> dict[str, Any]:
    """Write the side-by-side report of the runs `refs` (one pipeline) to `out`; returns what it holds."""
    if not out.endswith((".html", ".htm")):
        raise ConfigError(f"--out {out}: the comparison is one self-contained HTML file; name it FILE.html")
    records = [load_run_ref(runs_dir, ref) for ref in refs]
    kinds = sorted({str(r.get("pipeline")) for r in records})
    if len(kinds) > 1:
        raise ConfigError(f"shardwalk report compares runs of one pipeline; these are runs of {', '.join(kinds)}")
    labels = [_label(i) for i in range(len(records))]
    settings = differing_settings(records)
    short = [", ".join(f"{k}={_cell(v[i])}" for k, v in list(settings.items())[:2]) for i in range(len(records))]
    legend = [f"{labels[i]}" + (f" ({short[i]})" if short[i] else "") for i in range(len(records))]
    runs = [(legend[i], _outputs(r)) for i, r in enumerate(records)]
    series: dict[str, list[float]] = {}
    images = [png for draw in FIGURES.get(kinds[0], ()) if (png := draw(runs, series)) is not None]
    page = _page(kinds[0], records, labels, settings, images, _coinciding(series))
    if store.is_remote(out):
        store.write_bytes(out, page.encode())
    else:
        with atomic_file(store.local_path(out)) as tmp:
            Path(tmp).write_text(page)
    return {"runs": [r["run_id"] for r in records], "figures": len(images), "settings_differ": len(settings), "out": out}


def _page(pipeline: str, records: Sequence[dict[str, Any]], labels: Sequence[str], settings: dict[str, list[Any]],
          images: Sequence[str], note: str = "") -> str:
    runs = {"run": [r["run_id"] for r in records], "status": [r.get("status") for r in records],
            "started": [_started(r) for r in records],
            "source": [(r.get("config") or {}).get("source", "?") for r in records],
            "warnings": ["; ".join(run_warnings(r)) or "none" for r in records]}
    parts = [f"<h1>shardwalk: {len(records)} {html.escape(pipeline)} runs side by side</h1>",
             f"<p class='meta'>shardwalk {html.escape(shardwalk_version())}; highlighted rows differ between the runs.</p>",
             "<section class='run'>" + _table("Runs", runs, labels, highlight=False) + "</section>",
             _table("Settings that differ", settings, labels, highlight=True) if settings
             else "<h2>Settings that differ</h2><p>none: the runs have the same settings.</p>"]
    if images:
        parts.append("<h2>Curves</h2>" + "".join(f"<img alt='curves' src='data:image/png;base64,{png}'>" for png in images)
                     + (f"<p class='note'>{html.escape(note)}</p>" if note else ""))
    parts.append(_table("Metrics", _metrics(records), labels, highlight=True))
    body = "".join(parts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>shardwalk {html.escape(pipeline)} comparison</title>"
            f"<style>{CSS}{HIGHLIGHT}</style></head><body>{body}</body></html>")



