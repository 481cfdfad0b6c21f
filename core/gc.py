"""Garbage collection of a runs dir: uncommitted attempts and outputs that no run record names.

Never removes committed output a run record still references, nor anything younger than `older_than`
seconds (a writer may still be uploading it). Works on object stores and local directories alike.
"""

from __future__ import annotations

import calendar
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from core import store
from core.dag import list_runs
from core.errors import ConfigError, DataError
from core.io import TEMP_PREFIX, is_committed
from core.run_records import is_unreadable

DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90s', '15m', '24h', '7d' → seconds."""
    match = DURATION_RE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise ConfigError(f"invalid duration {text!r}: use a number and a unit s, m, h or d (e.g. 24h)")
    return float(match.group(1)) * UNITS[match.group(2)]


@dataclass(frozen=True)
class Garbage:
    """One thing gc removes, and why."""

    location: str
    reason: str  # "uncommitted" | "unreferenced"


def referenced(runs_dir: str) -> set[str]:
    """Every output and attempt a run record names."""
    names: set[str] = set()
    for record in list_runs(runs_dir):
        if is_unreadable(record):  # its outputs cannot be told apart from garbage: never guess
            raise DataError(f"{record['error']}; repair or remove that run record before gc")
        for stage in record.get("stages", {}).values():
            names.update(v.rstrip("/") for v in (stage.get("attempt"), stage.get("output")) if v)
    return names


def _attempt_started(attempt_id: str) -> float | None:
    try:
        return calendar.timegm(time.strptime(attempt_id.split("-", 1)[0], "%Y%m%dT%H%M%S"))
    except ValueError:
        return None


def find_garbage(runs_dir: str, older_than: float) -> list[Garbage]:
    """What `collect` would remove (a dry run)."""
    if store.is_remote(runs_dir):
        return _remote_garbage(runs_dir.rstrip("/"), older_than)
    return _local_garbage(Path(store.local_path(runs_dir)), older_than)


def _remote_garbage(runs_dir: str, older_than: float) -> list[Garbage]:
    keep, cutoff, found = referenced(runs_dir), time.time() - older_than, []
    for stage in store.list_dir(store.join(runs_dir, "cache")):
        if stage.type != pafs.FileType.Directory:
            continue
        stage_uri = store.join(runs_dir, "cache", stage.base_name)
        committed = {c.uri for c in store.committed_attempts(stage_uri)}
        for info in store.list_dir(store.join(stage_uri, store.ATTEMPTS)):
            attempt = store.join(stage_uri, store.ATTEMPTS, info.base_name)
            started = _attempt_started(info.base_name)
            if attempt in keep or (started is not None and started > cutoff):
                continue
            found.append(Garbage(attempt, "unreferenced" if attempt in committed else "uncommitted"))
    return found


def _local_garbage(runs_dir: Path, older_than: float) -> list[Garbage]:
    # by directory name: records made with a relative --runs-dir hold relative paths
    keep = {Path(v).name for v in referenced(str(runs_dir))}
    cutoff, found = time.time() - older_than, []
    cache = runs_dir / "cache"
    for path in sorted(cache.iterdir()) if cache.is_dir() else []:
        if path.name in keep or path.stat().st_mtime > cutoff:
            continue
        if path.name.startswith((TEMP_PREFIX, ".old-")) or not is_committed(path):
            found.append(Garbage(str(path), "uncommitted"))
        else:
            found.append(Garbage(str(path), "unreferenced"))
    return found


def collect(runs_dir: str, older_than: float, dry_run: bool = False) -> list[Garbage]:
    """Remove (unless `dry_run`) and return the garbage under `runs_dir`."""
    garbage = find_garbage(runs_dir, older_than)
    for g in [] if dry_run else garbage:
        if store.is_remote(g.location):
            store.delete_prefix(g.location)
        else:
            shutil.rmtree(g.location, ignore_errors=True)
    return garbage
