"""What the user sees: a live stage display on a terminal, plain log lines otherwise, and run tables."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from shardwalk.core.dag.runner import Pipeline, RunRecord, StageRecord
from shardwalk.pipelines.settings import MISSING

DONE = {"done", "cached", "failed", "skipped"}
Reporter = Callable[[RunRecord, StageRecord], None]


def _stage_line(rec: StageRecord) -> str:
    if rec.status == "cached":
        return f"stage {rec.name}: cache hit ({rec.rows} rows)"
    if rec.status == "done":
        return f"stage {rec.name}: done in {rec.seconds:.2f}s ({rec.rows} rows)"
    if rec.status == "failed":
        return f"stage {rec.name}: FAILED: {(rec.error or '').splitlines()[0]}"
    if rec.status == "skipped":
        return f"stage {rec.name}: skipped ({rec.error})"
    return f"stage {rec.name}: {rec.status}"


@contextlib.contextmanager
def make_reporter(pipeline: Pipeline, stream: Any = None) -> Iterator[Reporter]:
    """A rich progress display when attached to a terminal, else one plain line per stage event."""
    stream = stream or sys.stderr
    if not stream.isatty():
        def log_line(run: RunRecord, rec: StageRecord) -> None:
            print(f"[{run.run_id}] {_stage_line(rec)}", file=stream, flush=True)

        yield log_line
        return
    console = Console(file=stream)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(pipeline.name, total=len(pipeline.stages))

        def live(run: RunRecord, rec: StageRecord) -> None:
            if rec.status in DONE:
                console.print(_stage_line(rec), markup=False, highlight=False)
            running = [s.name for s in run.stages.values() if s.status == "running"]
            finished = sum(s.status in DONE for s in run.stages.values())
            label = f"{pipeline.name}: {', '.join(running)}" if running else pipeline.name
            progress.update(task, completed=finished, description=label)

        yield live


def _fmt_time(ts: Any) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def run_status(record: dict[str, Any]) -> str:
    """`running` only while the recording process lives; a killed driver's run reads `interrupted`."""
    status = record.get("status", "?")
    if status == "running" and record.get("host") == socket.gethostname():
        try:
            os.kill(int(record.get("pid", 0)), 0)
        except (ProcessLookupError, ValueError):
            return "interrupted"
        except PermissionError:
            pass
    return status


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict | bool) or value is None else str(value)


def _compact(metrics: dict[str, Any]) -> str:
    """Every metric, whole: the table wraps the column rather than cutting it."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _output_exists(stage: dict[str, Any]) -> bool:
    """A stage's output is listed only when it was committed and (on a local disk) is still there."""
    output = stage.get("output")
    if stage.get("status") not in ("done", "cached") or not output:
        return False
    return "://" in str(output) or Path(output).exists()


def print_settings(record: dict[str, Any], console: Console) -> None:
    """The run's settings: those that differ from the pipeline's defaults first, marked `*`, then the rest."""
    from shardwalk.pipelines.settings import settings_rows

    rows = settings_rows(record)
    if not rows:
        return
    table = Table(title="settings (* differs from the default)", title_justify="left")
    for col in ("", "key", "value", "default"):
        table.add_column(col, overflow="fold")
    for key, value, default, changed in rows:
        table.add_row("*" if changed else "", key, _value(value), "" if default is MISSING else _value(default))
    console.print(table)


def print_run(record: dict[str, Any], runs_dir: str | os.PathLike, console: Console | None = None) -> None:
    """The stages table of one run, then its headline metrics and report path."""
    console = console or Console()
    title = f"run {record['run_id']} · {record['pipeline']} · {run_status(record)} · started {_fmt_time(record.get('started'))}"
    table = Table(title=title, title_justify="left")
    for col in ("stage", "status", "rows", "seconds"):
        table.add_column(col, no_wrap=True)
    table.add_column("metrics", overflow="fold", ratio=1)
    for rec in record["stages"].values():
        status = "cache hit" if rec.get("cache_hit") else rec["status"]
        seconds = f"{rec['seconds']:.2f}" if rec.get("seconds") is not None else "-"
        rows = str(rec["rows"]) if rec.get("rows") is not None else "-"
        table.add_row(*map(Text, (rec["name"], status, rows, seconds, _compact(rec.get("metrics") or {}))))
    console.print(table)
    print_settings(record, console)
    for rec in record["stages"].values():
        if rec["status"] == "failed":
            error = (rec.get("error") or "").splitlines()[0]
            console.print(Text.assemble((f"{rec['name']} failed:", "red"), f" {error}"))
    outputs = [rec for rec in record["stages"].values() if _output_exists(rec)]
    if outputs:
        console.print("outputs:", markup=False, highlight=False)
    for rec in outputs:
        console.print(f"  {rec['name']}: {rec['output']}", markup=False, highlight=False, soft_wrap=True)
    report = Path(runs_dir) / "runs" / record["run_id"] / "report.html"
    if report.is_file():
        console.print(f"report: {report}", markup=False, highlight=False, soft_wrap=True)
