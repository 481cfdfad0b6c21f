"""Run records people can read: find a run by `latest` or an id prefix, list runs whole, diff two runs."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from shardwalk.core.dag.cache_key import changed_parts
from shardwalk.core.dag.run_records import UNREADABLE, is_unreadable, placed_stages
from shardwalk.core.dag.runner import list_runs, load_run
from shardwalk.core.errors import ConfigError
from shardwalk.core.storage import store
from shardwalk.pipelines.progress import _fmt_time, run_status
from shardwalk.pipelines.settings import flatten

LATEST = "latest"


def resolve_run_id(runs_dir: str | os.PathLike, ref: str) -> str:
    """`latest`, a full run id, or any prefix that names exactly one run."""
    records = list_runs(runs_dir)
    where = store.join(os.fspath(runs_dir), "runs")  # not Path(): it would turn s3://b into s3:/b
    if not records:
        raise ConfigError(f"no runs under {where}")
    if ref == LATEST:
        readable = [r for r in records if not is_unreadable(r)]
        if not readable:
            raise ConfigError(f"no readable run under {where}: {records[0]['error']}")
        return readable[0]["run_id"]
    ids = [r["run_id"] for r in records]
    if ref in ids:
        return ref
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise ConfigError(f"run id prefix '{ref}' matches {len(matches)} runs under {where}: {shown}")
    raise ConfigError(f"no run '{ref}' under {where} (give a run id, a unique prefix of one, or 'latest')")


def load_run_ref(runs_dir: str | os.PathLike, ref: str) -> dict[str, Any]:
    """The run record named by `ref`, its stages in pipeline order, their outputs placed under `runs_dir`.

    The record is data: nothing in it is imported or used as a location (shardwalk.core.dag.run_records.placed_stages).
    """
    record = placed_stages(load_run(runs_dir, resolve_run_id(runs_dir, ref)), runs_dir)
    record["stages"] = {name: record["stages"][name] for name in stage_order(record)}
    return record


def stage_order(record: dict[str, Any]) -> list[str]:
    """The pipeline's stage order as the record kept it (`stage_order`; run.json sorts `stages` by name).

    Never rebuilt by importing the record's `pipeline`: a record that anyone with write access to a shared
    runs dir could have written must not choose code to run. Older records keep their sorted order.
    """
    names = list(record["stages"])
    order = record.get("stage_order")
    if not isinstance(order, list):
        return names
    return [n for n in order if isinstance(n, str) and n in record["stages"]] + [n for n in names if n not in order]


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    stages = record.get("stages", {}).values()
    status = f"{UNREADABLE}: {record.get('error')}" if is_unreadable(record) else run_status(record)
    return {
        "run_id": record["run_id"],
        "pipeline": record.get("pipeline"),
        "status": status,
        "started": _fmt_time(record.get("started")),
        "seconds": round(record["finished"] - record["started"], 1) if record.get("finished") else None,
        "stages": len(stages),
        "cached": sum(1 for s in stages if s.get("cache_hit")),
    }


def print_runs(runs_dir: str | os.PathLike, *, as_json: bool = False, stream: TextIO | None = None) -> None:
    """One line per run, newest first: a table on a terminal, tab-separated whole ids when piped, or JSON."""
    stream = stream or sys.stdout
    rows = [_summary(r) for r in list_runs(runs_dir)]
    if as_json:
        print(json.dumps(rows, indent=1), file=stream)
        return
    if not rows:
        print(f"no runs under {store.join(os.fspath(runs_dir), 'runs')}", file=stream)
        return
    if not stream.isatty():
        for r in rows:
            print("\t".join("-" if v is None else str(v) for v in r.values()), file=stream)
        return
    table = Table()
    table.add_column("run id", no_wrap=True, min_width=max(len(r["run_id"]) for r in rows))
    for col in ("pipeline", "status", "started", "seconds", "stages (cached)"):
        table.add_column(col, overflow="fold")
    for r in rows:
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        cells = (r["run_id"], r["pipeline"], r["status"], r["started"], seconds, f"{r['stages']} ({r['cached']})")
        table.add_row(*map(Text, cells))
    Console(file=stream).print(table)


def run_differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """(section, key, value in A, value in B) for every setting, stage outcome and metric that differs."""
    rows: list[tuple[str, str, Any, Any]] = []
    if a.get("pipeline") != b.get("pipeline"):
        rows.append(("run", "pipeline", a.get("pipeline"), b.get("pipeline")))
    for section, fa, fb in (
        ("setting", flatten(a.get("config", {})), flatten(b.get("config", {}))),
        ("metric", _stage_values(a, "metrics"), _stage_values(b, "metrics")),
        ("stage", _stage_values(a, "outcome"), _stage_values(b, "outcome")),
    ):
        for key in list(fa) + [k for k in fb if k not in fa]:
            va, vb = fa.get(key, "—"), fb.get(key, "—")
            if va != vb:
                rows.append((section, key, va, vb))
    return rows


def _stage_values(record: dict[str, Any], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, stage in record.get("stages", {}).items():
        if what == "metrics":
            out.update({f"{name}.{k}": v for k, v in flatten(stage.get("metrics") or {}).items()})
        else:
            out[f"{name}.status"] = stage.get("status")
            out[f"{name}.key"] = stage.get("key")
    return out


def print_diff(runs_dir: str | os.PathLike, ref_a: str, ref_b: str, *, as_json: bool = False, stream: TextIO | None = None) -> int:
    """Print what differs between two runs; returns how many rows differ."""
    stream = stream or sys.stdout
    a, b = load_run_ref(runs_dir, ref_a), load_run_ref(runs_dir, ref_b)
    rows = run_differences(a, b)
    if as_json:
        print(json.dumps([dict(zip(("section", "key", "a", "b"), r)) for r in rows], indent=1, default=str), file=stream)
        return len(rows)
    console = Console(file=stream, width=None if stream.isatty() else 160)
    console.print(f"A = {a['run_id']}\nB = {b['run_id']}", markup=False, highlight=False, soft_wrap=True)
    if not rows:
        console.print("no differences in settings, stage keys or metrics", markup=False)
        return 0
    table = Table()
    for col in ("", "key", "A", "B"):
        table.add_column(col, overflow="fold")
    for section, key, va, vb in rows:
        table.add_row(*map(Text, (section, key, _fmt(va), _fmt(vb))))
    console.print(table)
    return len(rows)


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def cache_miss_reasons(runs_dir: str | os.PathLike, record: dict[str, Any]) -> dict[str, str]:
    """Why each stage of `record` that ran was not a cache hit: which parts of its key (code, params, an input
    file, an upstream stage, its version) differ from the newest earlier run of the same pipeline and stage."""
    earlier = [r for r in list_runs(runs_dir) if not is_unreadable(r) and r.get("pipeline") == record.get("pipeline")
               and r.get("run_id") != record.get("run_id") and (r.get("started") or 0) < (record.get("started") or 0)]
    reasons = {}
    for name, stage in record.get("stages", {}).items():
        if stage.get("cache_hit") or stage.get("status") not in ("done", "failed", "running", "interrupted"):
            continue
        parts = stage.get("key_parts") or {}
        before = next((r for r in earlier if isinstance(r.get("stages", {}).get(name), dict)
                       and r["stages"][name].get("key_parts")), None)
        if not parts or before is None:
            reasons[name] = "no earlier run of this stage to compare with"
        elif before["stages"][name].get("key") == stage.get("key"):
            reasons[name] = (f"same key as run {before['run_id']}: its output was missing, corrupt or forced"
                             + (f" ({stage['warning']})" if stage.get("warning") else ""))
        else:
            changed = changed_parts(before["stages"][name]["key_parts"], parts)
            reasons[name] = f"{', '.join(changed)} changed since run {before['run_id']}"
    return reasons


def print_cache_misses(runs_dir: str | os.PathLike, record: dict[str, Any], stream: TextIO | None = None) -> None:
    """The `cache_miss_reasons` of a run, one line per stage that ran."""
    reasons = cache_miss_reasons(runs_dir, record)
    if reasons:
        print("why stages ran (not cache hits):", file=stream or sys.stdout)
    for name, reason in reasons.items():
        print(f"  {name}: {reason}", file=stream or sys.stdout)
