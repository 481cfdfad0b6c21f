"""Garbage collection of a runs dir: uncommitted attempts and outputs that no run record names.

Never removes committed output a run record still references, anything a running writer holds a live lease
on (core/dag/lease.py), nor anything younger than `older_than` seconds. Locations are compared in canonical form
(core/storage/location.py), so any spelling of the runs dir works; a runs dir other than the one the records were
written under is refused. Works on object stores and local directories alike.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from shardwalk.core.dag import lease
from shardwalk.core.dag.run_records import is_unreadable
from shardwalk.core.dag.runner import list_runs
from shardwalk.core.errors import ConfigError, CorruptArtifactError, DataError
from shardwalk.core.storage import store
from shardwalk.core.storage.files import TEMP_PREFIX, is_committed
from shardwalk.core.storage.location import canonical

DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
STATE_PREFIX, OLD_PREFIX = ".state-", ".old-"


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
    reason: str  # "uncommitted" | "unreferenced" | "stale lease"
    detail: str = ""  # why, for --dry-run: age, what it is
    parent: str = ""  # where its lease would be (the cache dir; on a store, the stage prefix)
    guard: str = ""  # the name a live lease there protects it by


def recorded_runs_dir(record: dict[str, Any]) -> str | None:
    """The canonical runs dir a record was written under: its own `runs_dir`, else derived from an absolute
    stage output (`<runs>/cache/<stage>`); None for old records holding only relative paths."""
    if isinstance(record.get("runs_dir"), str):
        return canonical(record["runs_dir"])
    for stage in (record.get("stages") or {}).values():
        output = stage.get("output") if isinstance(stage, dict) else None
        if isinstance(output, str) and (store.is_uri(output) or Path(output).is_absolute()):
            parent, cache, _ = canonical(output).rsplit("/", 2)
            return parent if cache == "cache" else None
    return None


def referenced(runs_dir: str) -> set[str]:
    """The canonical location of every output and attempt a run record names.

    ConfigError if a record was written under another runs dir: its references would match nothing here and
    gc would delete what it still needs.
    """
    given, names = canonical(runs_dir), set()
    for record in list_runs(runs_dir):
        if is_unreadable(record):  # its outputs cannot be told apart from garbage: never guess
            raise DataError(f"{record['error']}; repair or remove that run record before gc")
        own = recorded_runs_dir(record)
        if own is not None and own != given:
            raise ConfigError(f"{runs_dir}: run {record.get('run_id')} was recorded under {own}, not {given}; gc "
                              f"refuses to guess what it references (pass the runs dir the runs were made with)")
        for stage in (record.get("stages") or {}).values():
            for value in (stage.get("attempt"), stage.get("output")) if isinstance(stage, dict) else ():
                if isinstance(value, str) and value:
                    names.add(_reference(value, given))
    return names


def _reference(value: str, given: str) -> str:
    if store.is_uri(value) or Path(value).is_absolute():
        return canonical(value)
    return f"{given}/cache/{Path(value).name}"  # an old record made with a relative --runs-dir


def _stage_name(entry: str) -> str:
    """The stage output a cache entry belongs to: `NAME`, `.tmp-NAME@…`, `.state-NAME`, `.old-NAME-<hex>`."""
    if entry.startswith(TEMP_PREFIX):
        return entry[len(TEMP_PREFIX):].split("@", 1)[0]
    if entry.startswith(STATE_PREFIX):
        return entry[len(STATE_PREFIX):]
    if entry.startswith(OLD_PREFIX):
        return entry[len(OLD_PREFIX):].rsplit("-", 1)[0]
    return entry


def _attempt_started(attempt_id: str) -> float | None:
    try:
        return calendar.timegm(time.strptime(attempt_id.split("-", 1)[0], "%Y%m%dT%H%M%S"))
    except ValueError:
        return None


def _ago(seconds: float) -> str:
    return f"{seconds:.0f}s old" if seconds < 3600 else f"{seconds / 3600:.1f}h old"


def find_garbage(runs_dir: str, older_than: float) -> list[Garbage]:
    """What `collect` would remove (a dry run)."""
    now = time.time()  # before the records are read: every age and grace is measured from then
    keep = referenced(runs_dir)
    if store.is_remote(runs_dir):
        return _remote_garbage(runs_dir.rstrip("/"), keep, older_than, now)
    return _local_garbage(Path(store.local_path(runs_dir)), keep, older_than, now)


# ----------------------------------------------------------------------------- local runs dir


def _local_leases(cache: Path, now: float) -> tuple[set[str], list[tuple[Path, float]]]:
    """Names with a live lease, and the stale lease files with their ages."""
    live, stale = set(), []
    for path in cache.glob(f"{lease.PREFIX}*") if cache.is_dir() else []:
        name = lease.protected_name(path.name)
        try:
            age, body = now - path.stat().st_mtime, json.loads(path.read_bytes())
        except (OSError, ValueError):
            age, body = 0.0, None  # being rewritten: live
        if name is not None and lease.is_live(age, body):
            live.add(name)
        elif name is not None:
            stale.append((path, age))
    return live, stale


def _local_garbage(runs_dir: Path, keep: set[str], older_than: float, now: float) -> list[Garbage]:
    root = canonical(runs_dir)
    cache = runs_dir / "cache"
    live, stale = _local_leases(cache, now)
    found = [Garbage(str(p), "stale lease", f"not refreshed for {age:.0f}s", str(cache))
             for p, age in stale if age > older_than]
    for path in sorted(cache.iterdir()) if cache.is_dir() else []:
        if path.name.startswith(lease.PREFIX) or _stage_name(path.name) in live:
            continue
        with contextlib.suppress(FileNotFoundError):
            age = now - path.lstat().st_mtime
            if f"{root}/cache/{path.name}" in keep or age <= older_than:
                continue
            if path.name.startswith((TEMP_PREFIX, OLD_PREFIX, STATE_PREFIX)) or not is_committed(path):
                found.append(Garbage(str(path), "uncommitted", f"no manifest, no live lease, {_ago(age)}",
                                     str(cache), _stage_name(path.name)))
            else:
                found.append(Garbage(str(path), "unreferenced", f"committed, named by no run record, {_ago(age)}",
                                     str(cache), path.name))
    return found


# ----------------------------------------------------------------------------- object store


def _remote_leases(stage_uri: str, children: Iterable[pafs.FileInfo], now: float) -> tuple[set[str], list[tuple[str, float]]]:
    live, stale = set(), []
    for info in children:
        name = lease.protected_name(info.base_name)
        if info.type != pafs.FileType.File or name is None:
            continue
        where = store.join(stage_uri, store.ATTEMPTS, info.base_name)
        try:
            body = store.read_json(where)
        except CorruptArtifactError:
            body = None
        except OSError:  # rewritten or removed under every read: treated as live, like a local lease
            live.add(name)
            continue
        stamp = info.mtime.timestamp() if info.mtime is not None else (body or {}).get("refreshed")
        age = now - stamp if isinstance(stamp, int | float) else 0.0
        if lease.is_live(age, body):
            live.add(name)
        else:
            stale.append((where, age))
    return live, stale


def _remote_garbage(runs_dir: str, keep: set[str], older_than: float, now: float) -> list[Garbage]:
    root, found = canonical(runs_dir), []
    for stage in store.list_dir(store.join(runs_dir, "cache")):
        if stage.type != pafs.FileType.Directory or stage.base_name.startswith("."):
            continue  # `.state-*`: a stage's resumable state, spent on commit
        found += _stage_garbage(store.join(runs_dir, "cache", stage.base_name), f"{root}/cache/{stage.base_name}",
                                keep, older_than, now)
    return found


def _stage_garbage(stage_uri: str, where: str, keep: set[str], older_than: float, now: float) -> list[Garbage]:
    children = store.list_dir(store.join(stage_uri, store.ATTEMPTS))
    live, stale = _remote_leases(stage_uri, children, now)
    found = [Garbage(u, "stale lease", f"not refreshed for {age:.0f}s", stage_uri) for u, age in stale if age > older_than]
    committed = {c.uri.partition("?")[0].rstrip("/").rsplit("/", 1)[1]: c.manifest.get("committed_at")
                 for c in store.committed_attempts(stage_uri)}
    # the newest committed attempt of a referenced output is what a cache hit serves; one committed within a
    # lease's lifetime may not be in its run's record yet (the driver saves it after the writer returns)
    newest = next(iter(committed), None) if where in keep else None
    grace = now - lease.LeaseSettings.from_env().lifetime_s
    for info in children:
        name = info.base_name
        just_committed = isinstance(committed.get(name), int | float) and committed[name] > grace
        if info.type != pafs.FileType.Directory or name in live or name == newest or just_committed:
            continue
        started = _attempt_started(name)
        if f"{where}/{store.ATTEMPTS}/{name}" in keep or (started is not None and now - started <= older_than):
            continue
        age = "" if started is None else f", {_ago(now - started)}"
        attempt = store.join(stage_uri, store.ATTEMPTS, name)
        if name in committed:
            found.append(Garbage(attempt, "unreferenced", f"committed, named by no run record{age}", stage_uri, name))
        else:
            found.append(Garbage(attempt, "uncommitted", f"no manifest, no live lease{age}", stage_uri, name))
    return found


# ----------------------------------------------------------------------------- removal


def _lease_appeared(g: Garbage) -> bool:
    """Whether a writer took a lease on `g` since it was listed (it resumed from it, or started over)."""
    if not g.guard:
        return False
    if store.is_remote(g.parent):
        live, _ = _remote_leases(g.parent, store.list_dir(store.join(g.parent, store.ATTEMPTS)), time.time())
    else:
        live, _ = _local_leases(Path(g.parent), time.time())
    return g.guard in live


def _remove(g: Garbage) -> None:
    if store.is_remote(g.location):
        if g.reason == "stale lease":
            fs, path = store.resolve(g.location)
            with contextlib.suppress(FileNotFoundError):
                fs.delete_file(path)
        else:
            store.delete_prefix(g.location)
    elif g.reason == "stale lease":
        Path(g.location).unlink(missing_ok=True)
    else:
        shutil.rmtree(g.location, ignore_errors=True)


def collect(runs_dir: str, older_than: float, dry_run: bool = False) -> list[Garbage]:
    """Remove (unless `dry_run`) and return the garbage under `runs_dir`."""
    garbage = find_garbage(runs_dir, older_than)
    if dry_run:
        return garbage
    removed = []
    for g in garbage:
        if not _lease_appeared(g):
            _remove(g)
            removed.append(g)
    return removed
