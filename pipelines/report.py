"""Reports people look at: matplotlib figures as PNGs, a Markdown file and a self-contained HTML file."""

from __future__ import annotations

import base64
import html
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}p.meta{color:#666}"""


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


def publish(stage_output: Path, run_dir: Path) -> Path | None:
    """Copy a committed report (and its PNGs) into the run directory, where users look for it."""
    if not (stage_output / "report.html").is_file():
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in stage_output.iterdir():
        if path.name in REPORT_FILES or path.suffix == ".png":
            shutil.copy2(path, run_dir / path.name)
    return run_dir / "report.html"
