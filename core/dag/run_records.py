"""Run records (run.json): what one run knows about each stage, and reading them back — every one, even a damaged one.

A record that cannot be read is listed as `unreadable` with the reason (docs/design.md "Run records"),
so `shardwalk runs` shows it and `gc` refuses to guess which outputs it references.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shardwalk.core.dag import stage_store
from shardwalk.core.errors import ConfigError, CorruptArtifactError
from shardwalk.core.storage import store
from shardwalk.core.storage.files import pid_alive, read_json, write_json_atomic
from shardwalk.core.storage.names import artifact_name, is_artifact_name

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
UNREADABLE = "unreadable"  # the status of a run record that could not be read


def check_name(name: str, what: str) -> str:
    """Reject names that could escape the runs directory or confuse a shell."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name or not is_artifact_name(name):
        raise ConfigError(f"invalid {what} {name!r}: use letters, digits, '_', '-', '.' (no '..', no '/')")
    return name


@dataclass
class StageRecord:
    """What one run knows about one stage; serialised into run.json."""

    name: str
    key: str
    output: str
    status: str = "pending"  # pending | running | cached | done | failed | skipped | interrupted
    cache_hit: bool = False
    rows: int | None = None
    seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_type: str | None = None
    bad_input: bool = False  # the failure was the user's input (exit 2), not an internal error
    warning: str | None = None  # e.g. a corrupt cached output that was recomputed
    attempt: str | None = None  # object-store runs dir: the committed attempt this run used
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0
    key_parts: dict[str, str] = field(default_factory=dict)  # what the key is made of (shardwalk.core.dag.cache_key.key_parts)


@dataclass
class RunRecord:
    """The run.json of one run: who, what, when, and each stage's outcome."""

    run_id: str
    pipeline: str
    config: dict[str, Any]
    status: str = "running"  # running | succeeded | failed | interrupted
    error: str | None = None  # why a run ended failed or interrupted outside any stage (connection, disk, signal)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    runs_dir: str | None = None  # canonical (core/storage/location.py): gc refuses another runs dir's records
    stages: dict[str, StageRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON; `stage_order` keeps the pipeline's order (run.json sorts `stages` by name)."""
        return {**asdict(self), "stage_order": list(self.stages)}

    def failed_stage(self) -> StageRecord | None:
        return next((s for s in self.stages.values() if s.status == "failed"), None)


def new_run_id(pipeline: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{pipeline}-{uuid.uuid4().hex[:6]}"


def run_path(runs_dir: str | os.PathLike, run_id: str) -> Path:
    """The run.json of `run_id`, refusing ids that would leave the runs directory."""
    return _local(runs_dir) / "runs" / check_name(run_id, "run id") / "run.json"


def _local(runs_dir: str | os.PathLike) -> Path:
    """A local runs dir as a Path (a file:// URI included)."""
    text = os.fspath(runs_dir)
    return store.local_path(text) if text.startswith("file://") else Path(text)


def mark_dead_runs(runs_dir: str | os.PathLike) -> list[str]:
    """Close the records of runs on this host whose driver died (SIGKILL, OOM) while they were `running`."""
    host, closed = socket.gethostname(), []
    for record in list_runs(runs_dir):
        pid, stages = record.get("pid"), record.get("stages")
        if (record.get("status") != "running" or record.get("host") != host or not isinstance(pid, int)
                or not isinstance(record.get("run_id"), str) or not isinstance(stages, dict) or pid_alive(pid)):
            continue
        reason = f"the driver (pid {pid}) was killed before the run finished"
        record.update(status="interrupted", error=reason)
        for stage in stages.values():
            if isinstance(stage, dict) and stage.get("status") in ("running", "pending"):
                stage.update(status="interrupted" if stage["status"] == "running" else "skipped", error=reason)
        with contextlib.suppress(ConfigError, OSError):
            write_json_atomic(run_path(runs_dir, record["run_id"]), record)
            closed.append(record["run_id"])
    return closed


def load_run(runs_dir: str | os.PathLike, run_id: str) -> dict[str, Any]:
    """The run.json of a run, or ConfigError naming the id."""
    if store.is_remote(str(runs_dir)):
        record = stage_store.load_record(str(runs_dir), check_name(run_id, "run id"))
        if record is None:
            raise ConfigError(f"no run '{run_id}' under {store.join(str(runs_dir), 'runs')}")
        return record
    path = run_path(runs_dir, run_id)
    return read_json(path, ConfigError(f"no run '{run_id}' under {Path(runs_dir) / 'runs'}"), "run record")


def placed_stages(record: dict[str, Any], runs_dir: str | os.PathLike) -> dict[str, Any]:
    """`record` with each stage's output and attempt rebuilt under the trusted `runs_dir` from checked names.

    A record is data: its `output` / `attempt` strings could name any path or URI (another server through
    `?endpoint_override=`, a folder outside the runs dir). Readers take only the stage's name, key and attempt
    id from it and place them where the Runner puts them (shardwalk.core.dag.runner.output_dir, shardwalk.core.dag.stage_store.stage_uri).
    """
    where = f"run record {record.get('run_id')!r} under {runs_dir}"
    stages = record.get("stages")
    if not isinstance(stages, dict):
        raise CorruptArtifactError(f"{where}: no 'stages' table")
    remote = store.is_remote(os.fspath(runs_dir))
    placed = {}
    for name, stage in stages.items():
        if not isinstance(stage, dict) or not isinstance(stage.get("key"), str):
            raise CorruptArtifactError(f"{where}: stage {str(name)[:80]!r} has no key")
        folder = f"{artifact_name(name, where)}-{artifact_name(stage['key'], where)[:24]}"
        attempt = stage.get("attempt")
        if remote:
            output = store.join(os.fspath(runs_dir), "cache", folder)
            if attempt is not None:
                # the id only: a runs dir spelled with a query string (`?endpoint_override=…`) records it on the URI
                attempt_id = str(attempt).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
                attempt = store.join(output, store.ATTEMPTS, artifact_name(attempt_id, where))
        else:
            output, attempt = str(_local(runs_dir) / "cache" / folder), None  # a local runs dir has no attempts
        placed[name] = {**stage, "output": output, "attempt": attempt}
    return {**record, "stages": placed}


def unreadable_record(run_id: str, reason: str, started: float = 0.0) -> dict[str, Any]:
    """The stand-in of a run.json that could not be read: listed, never silently skipped."""
    return {"run_id": run_id, "pipeline": None, "status": UNREADABLE, "error": reason, "started": started,
            "finished": None, "stages": {}}


def is_unreadable(record: dict[str, Any]) -> bool:
    """Whether `record` stands in for a run.json that could not be read."""
    return record.get("status") == UNREADABLE


def _read_record(path: Path) -> dict[str, Any]:
    """One local run.json, or its `unreadable` stand-in naming why."""
    run_id = path.parent.name
    try:
        started = path.stat().st_mtime
        record = json.loads(path.read_text())
    except OSError as exc:
        return unreadable_record(run_id, f"{path}: cannot read ({exc.strerror or exc})")
    except ValueError as exc:
        return unreadable_record(run_id, f"{path}: not valid JSON ({exc})", started)
    if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
        return unreadable_record(run_id, f"{path}: not a run record (no run_id)", started)
    return record


def list_runs(runs_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run.json under the runs directory, newest first; an unreadable one as `unreadable_record`."""
    if store.is_remote(str(runs_dir)):
        records = stage_store.list_records(str(runs_dir), unreadable_record)
        return sorted(records, key=lambda r: r.get("started") or 0, reverse=True)
    root = _local(runs_dir) / "runs"
    records = [_read_record(path) for path in (sorted(root.glob("*/run.json")) if root.is_dir() else [])]
    return sorted(records, key=lambda r: r.get("started") or 0, reverse=True)
