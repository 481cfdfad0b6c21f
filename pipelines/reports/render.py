"""Reports people look at: matplotlib figures as PNGs, a Markdown file and a self-contained HTML file."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shardwalk.pipelines.settings import changed_settings, run_warnings, shardwalk_version

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILES = ("report.md", "report.html")


@dataclass
class Section:
    """One heading of a report: prose, an optional figure and an optional table."""

    title: str
    text: str = ""
    figure: str | None = None  # file name of a PNG saved beside the report
    table: list[dict[str, Any]] = field(default_factory=list)


def _pyplot() -> Any:
    """matplotlib's pyplot, headless (workers and CI have no display), imported by the first figure only:
    every stage of a pipeline imports its module, and only the report stage draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(width: float = 6.4, height: float = 4.0, cols: int = 1) -> tuple[Figure, Any]:
    """A new figure with `cols` axes side by side (one axis, or an array of them) in the report's style."""
    fig, axes = _pyplot().subplots(1, cols, figsize=(width, height), dpi=110)
    for ax in np.atleast_1d(axes):
        ax.grid(True, alpha=0.3)
    return fig, axes


def save_figure(fig: Figure, out: Path, name: str) -> str:
    """Save and close a figure; returns the file name to put in a Section."""
    fig.tight_layout()
    fig.savefig(out / name, format="png")
    _pyplot().close(fig)
    return name


def value_ticks(ax: Any, values: Sequence[float]) -> None:
    """Label a log x axis at the plotted values themselves (16, 32, 64 … or 0.1, 0.3, 0.5): matplotlib's own
    log labels (3×10⁻¹, 4×10⁻¹, 6×10⁻¹) run into each other. Call after the scale is set."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(sorted({float(v) for v in values})))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def series_style(i: int) -> dict[str, Any]:
    """Matplotlib keywords for the i-th series of an axis: its own marker, line style and marker size."""
    marker, ls, size = STYLES[i % len(STYLES)]
    return {"marker": marker, "ls": ls, "markersize": size, "fillstyle": "none", "lw": 1.4}


def coinciding(series: dict[str, Sequence[float]]) -> list[list[str]]:
    """Groups of series names whose values are identical (drawn on top of each other)."""
    groups: dict[tuple, list[str]] = {}
    for name, values in series.items():
        groups.setdefault(tuple(np.round(np.asarray(values, float), 12).tolist()), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def coinciding_note(series: dict[str, Sequence[float]]) -> str:
    """A sentence naming the series a figure draws on top of each other ('' when none coincide)."""
    groups = coinciding(series)
    if not groups:
        return ""
    return " Identical curves (drawn on top of each other, told apart by their markers): " + "; ".join(
        " = ".join(g) for g in groups) + "."


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _md_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #333}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}p.meta{color:#666}
section.run{background:#f6f8fa;border:1px solid #d0d7de;border-radius:6px;padding:.4em 1em;margin:1em 0}
section.run table{margin:.3em 0;font-size:.9em}section.run td,section.run th{text-align:left;border:none;padding:.15em .6em}
section.run th{background:none;color:#555;font-weight:600}ul.warnings{color:#9a3412;margin:.3em 0}"""

# Series drawn on one axis get these in turn (marker, line style, marker size): identical series stay visible,
# the larger hollow markers of the earlier ones ringing the later ones.
STYLES = (("o", "-", 9), ("s", "--", 7.5), ("^", "-.", 6), ("D", ":", 5), ("v", "-", 4), ("P", "--", 3.5), ("X", "-.", 3))


def write_report(out: Path, title: str, intro: str, sections: Sequence[Section]) -> list[Path]:
    """Write report.md (PNG files beside it) and report.html (the same, with images embedded)."""
    md = [f"# {title}", "", intro, ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class='meta'>{html.escape(intro)}</p>"]
    for s in sections:
        md += [f"## {s.title}", "", s.text, ""]
        body += [f"<h2>{html.escape(s.title)}</h2>"]
        body += [f"<p>{html.escape(p)}</p>" for p in s.text.split("\n\n") if p.strip()]
        if s.figure:
            md += [f"![{s.title}]({s.figure})", ""]
            data = base64.b64encode((out / s.figure).read_bytes()).decode()
            body.append(f"<img alt='{html.escape(s.title)}' src='data:image/png;base64,{data}'>")
        if s.table:
            md += [_md_table(s.table), ""]
            body.append(_html_table(s.table))
    (out / "report.md").write_text("\n".join(md))
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>{''.join(body)}</body></html>"
    (out / "report.html").write_text(page)
    return [out / name for name in REPORT_FILES]


def header_rows(record: dict[str, Any]) -> list[tuple[str, str]]:
    """What a reader needs to tell one run's report from another's: run, pipeline, source, version, settings."""
    config = record.get("config") if isinstance(record.get("config"), dict) else {}
    changed = changed_settings(record)
    settings = ", ".join(f"{k} = {_setting(v)}" for k, v in changed.items()) or "all defaults"
    return [("run", str(record.get("run_id", "?"))), ("pipeline", str(record.get("pipeline", "?"))),
            ("source", str(config.get("source", "?"))), ("shardwalk", shardwalk_version()),
            ("started", _started(record)), ("settings that differ from the defaults", settings)]


def _setting(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict | bool) or value is None else str(value)


def _started(record: dict[str, Any]) -> str:
    started = record.get("started")
    return dt.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S") if isinstance(started, int | float) else "?"


def header_html(record: dict[str, Any]) -> str:
    """The run header of report.html: a table of `header_rows`, then the run's warnings."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in header_rows(record))
    warnings = run_warnings(record)
    listed = ("<ul class='warnings'>" + "".join(f"<li>warning: {html.escape(w)}</li>" for w in warnings) + "</ul>"
              if warnings else "<p class='meta'>no warnings</p>")
    return f"<section class='run'><table>{rows}</table>{listed}</section>"


def header_md(record: dict[str, Any]) -> str:
    """The run header of report.md: the same rows and warnings as `header_html`."""
    lines = [f"- **{k}**: {v}" for k, v in header_rows(record)]
    lines += [f"- **warning**: {w}" for w in run_warnings(record)] or ["- no warnings"]
    return "\n".join(lines)


def with_header(name: str, text: str, record: dict[str, Any]) -> str:
    """A report's text with the run header right under its title (report.html or report.md)."""
    if name == "report.html":
        at = text.find("</h1>")
        at = at + len("</h1>") if at >= 0 else text.find("<body>") + len("<body>")
        return text[:at] + header_html(record) + text[at:]
    first, sep, rest = text.partition("\n")
    return f"{first}\n\n{header_md(record)}\n{sep}{rest}"


def publish(stage_output: Path, run_dir: Path, record: dict[str, Any] | None = None) -> Path | None:
    """Copy a committed report (and its PNGs) into the run directory, where users look for it, with the
    run's header (`record`: which run, pipeline, source, version, settings, warnings) under its title."""
    if not (stage_output / "report.html").is_file():
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in stage_output.iterdir():
        if path.name in REPORT_FILES and record is not None:
            (run_dir / path.name).write_text(with_header(path.name, path.read_text(), record))
        elif path.name in REPORT_FILES or path.suffix == ".png":
            shutil.copy2(path, run_dir / path.name)
    return run_dir / "report.html"
