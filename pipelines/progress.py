"""What the user sees: a live stage display on a terminal, plain log lines otherwise, and run tables."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from shardwalk.core import validate
from shardwalk.core.dag.runner import Pipeline, RunRecord, StageRecord
from shardwalk.core.progress import Meter, Throttle, Update, describe
from shardwalk.pipelines.settings import MISSING

DONE = {"done", "cached", "failed", "skipped"}


def _stage_line(rec: StageRecord) -> str:
    rows = f" ({rec.rows:,} rows)" if rec.rows else ""  # a report or an index writes files, not table rows
    if rec.status == "cached":
        return f"stage {rec.name}: cache hit{rows}"
    if rec.status == "done":
        return f"stage {rec.name}: done in {rec.seconds:.2f}s{rows}"
    if rec.status == "failed":
        return f"stage {rec.name}: FAILED: {(rec.error or '').splitlines()[0]}"
    if rec.status == "skipped":
        return f"stage {rec.name}: skipped ({rec.error})"
    return f"stage {rec.name}: {rec.status}"


LOG_INTERVAL_S = 30.0  # without a terminal: at most one progress line per stage this often (SHARDWALK_PROGRESS_INTERVAL_S)


def log_interval() -> float:
    """Seconds between two progress lines of a stage in a log (SHARDWALK_PROGRESS_INTERVAL_S, default 30)."""
    return validate.env_seconds("SHARDWALK_PROGRESS_INTERVAL_S", LOG_INTERVAL_S)


class StageDisplay:
    """Stage events and in-stage progress (shardwalk.core.progress updates) for one run, on a terminal or as log lines.

    On a terminal: a live rich display (one row for the run, one per running stage with its phase, units
    done of total, rate and ETA). Otherwise one line per stage event and, per running stage, at most one
    progress line every `interval` seconds, so a log under `ray job submit` or a redirect stays readable.
    """

    def __init__(self, pipeline_name: str, stream: Any, progress: Progress | None, interval: float = LOG_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, stage_word: str = "stage ",
                 overall: bool = True) -> None:
        self.name, self.stream, self.live, self.interval, self.clock = pipeline_name, stream, progress, interval, clock
        self.stage_word = stage_word  # "stage build: insert: ..." in a run; "query: answer: ..." for a query
        self.run_id = ""
        self.meters: dict[str, Meter] = {}
        self.throttles: dict[str, Throttle] = {}
        self.rows: dict[str, Any] = {}  # stage → its rich task id
        self.ended: set[str] = set()  # stages no longer running: a late datagram about them is dropped
        self.lock = threading.Lock()
        self.overall = progress.add_task(pipeline_name, total=None) if progress is not None and overall else None

    def __call__(self, run: RunRecord, rec: StageRecord) -> None:
        with self.lock:
            self.run_id = run.run_id
            if rec.status == "running":
                self.ended.discard(rec.name)
            else:
                self.ended.add(rec.name)
                self._drop(rec.name)
            if self.live is None:
                print(f"[{run.run_id}] {_stage_line(rec)}", file=self.stream, flush=True)
                return
            if rec.status in DONE:
                self.live.console.print(_stage_line(rec), markup=False, highlight=False)
            finished = sum(s.status in DONE for s in run.stages.values())
            if self.overall is None:
                return
            self.live.update(self.overall, completed=finished, total=len(run.stages),
                             description=f"{self.name} ({finished}/{len(run.stages)} stages)")

    def progress(self, stage: str, sender: str, update: Update) -> None:
        """One update from a stage (from any thread: the progress listener calls this)."""
        with self.lock:
            if stage in self.ended:
                return
            meter = self.meters.setdefault(stage, Meter(self.clock))
            meter.update(update, sender)
            snap = meter.snapshot()
            if snap is None:
                return
            if self.live is None:
                throttle = self.throttles.setdefault(stage, Throttle(self.interval, self.clock, wait_first=True))
                if throttle.due():
                    prefix = f"[{self.run_id}] " if self.run_id else ""
                    print(f"{prefix}{self.stage_word}{stage}: {describe(snap)}", file=self.stream, flush=True)
                return
            if stage not in self.rows:
                self.rows[stage] = self.live.add_task(stage, total=None)
            indent = "  " if self.overall is not None else ""
            self.live.update(self.rows[stage], completed=snap.done, total=snap.total,
                             description=f"{indent}{stage}: {describe(snap)}")

    def _drop(self, stage: str) -> None:
        self.meters.pop(stage, None)
        self.throttles.pop(stage, None)
        task = self.rows.pop(stage, None)
        if task is not None and self.live is not None:
            self.live.remove_task(task)


@contextlib.contextmanager
def make_reporter(pipeline: Pipeline | str, stream: Any = None, stage_word: str = "stage ") -> Iterator[StageDisplay]:
    """A rich live display when attached to a terminal, else plain lines (stage events, throttled progress).

    A pipeline gets a row for the run (stages done of all); a name alone (a query) only its progress rows.
    """
    stream = stream or sys.stderr
    name = pipeline if isinstance(pipeline, str) else pipeline.name
    if not stream.isatty():
        yield StageDisplay(name, stream, None, log_interval(), stage_word=stage_word)
        return
    console = Console(file=stream)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as live:
        yield StageDisplay(name, stream, live, stage_word=stage_word, overall=not isinstance(pipeline, str))


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
