"""Stage outputs and run records on an object store (the remote half of core/dag/runner.py).

A stage still writes into a node-local scratch directory (hnswlib and most writers need local files); the
worker that ran it uploads the result as a new attempt and commits it with its manifest (core/storage/store.py).
Actors and tasks the stage starts put their files straight into the attempt from their own nodes and the
manifest lists them too (core/storage/sink.py). Inputs arrive as verified node-local copies from the download cache
(helpers on other nodes read the store objects behind them), so no stage reads another node's disk and no
data passes through the driver: the driver only lists manifests and moves URIs.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from shardwalk.core.dag import lease
from shardwalk.core.dag.attempt import STATE_DIR, commit_check
from shardwalk.core.errors import DataError, UpstreamVanishedError
from shardwalk.core.storage import node_cache, sink, store
from shardwalk.core.storage.files import TEMP_PREFIX, TOKEN, claim_token, new_token
from shardwalk.core.storage.names import is_artifact_name


def stage_uri(runs_dir: str, name: str, key: str) -> str:
    """Where a stage's attempts live; shared by every run (that is the cache)."""
    return store.join(runs_dir, "cache", f"{name}-{key[:24]}")


def record_uri(runs_dir: str, run_id: str) -> str:
    return store.join(runs_dir, "runs", run_id, "run.json")


def scratch_root() -> str | None:
    """Node-local scratch for stage outputs in progress (SHARDWALK_SCRATCH, else the system temp dir)."""
    root = sink.scratch_root()
    return None if root is None else str(root)


def execute_remote(fn: Callable[..., Any], final: str, inputs: Mapping[str, str], params: Mapping[str, Any], key: str,
                   declares_rows: bool = False) -> dict[str, Any]:
    """Download inputs to the node cache, run the stage into local scratch, upload and commit a new attempt."""
    state = STATE_DIR.set(state_uri(final))
    try:
        with node_cache.holding():  # the stage's inputs stay in the node cache (pinned) until it ends
            result = _execute(fn, final, inputs, params, key, declares_rows)
    finally:
        STATE_DIR.reset(state)  # Ray reuses worker processes: never leak into the next task
    store.delete_prefix(state_uri(final))  # committed: the state is spent
    return result


def state_uri(final: str) -> str:
    """`shardwalk.core.dag.runner.state_dir` for a stage output on a store: `<runs>/cache/.state-<stage>-<key>`."""
    base, sep, query = final.partition("?")  # a query string (the endpoint) stays at the end
    parent, name = base.rstrip("/").rsplit("/", 1)
    return f"{parent}/.state-{name}{sep}{query}"


def _materialize_input(uri: str) -> tuple[Path, int]:
    """A verified local copy of an upstream output; UpstreamVanishedError (not bad input) if it is gone."""
    try:
        return node_cache.materialize(uri)
    except DataError:
        if store.committed_attempts(uri):
            raise
        raise UpstreamVanishedError(f"{uri}: the committed output of an upstream stage vanished") from None


def _execute(fn: Callable[..., Any], final: str, inputs: Mapping[str, str], params: Mapping[str, Any], key: str,
             declares_rows: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    local_inputs, downloaded = {}, 0
    for arg, uri in inputs.items():
        local_inputs[arg], fetched = _materialize_input(uri)
        downloaded += fetched
    attempt = store.join(final, store.ATTEMPTS, store.new_attempt_id())
    with lease.held(attempt), tempfile.TemporaryDirectory(prefix=f"{TEMP_PREFIX}stage-", dir=scratch_root(), ignore_cleanup_errors=True) as tmp, \
            sink.stage_attempt(Path(tmp), attempt) as put:  # helpers on any node upload into `attempt`
        token = new_token(Path(tmp))  # the scratch's and the attempt's: both checked before the commit
        store.write_bytes(store.join(attempt, TOKEN), token.encode())
        metrics = dict(fn(Path(tmp), **local_inputs, **params) or {})
        seconds = round(time.perf_counter() - started, 4)
        claim_token(Path(tmp), token)
        committed, uploaded = store.upload_dir(Path(tmp), final, {"key": key, "metrics": metrics, "seconds": seconds},
                                               attempt=attempt, uploaded=put.files, schemas=put.schemas, token=token,
                                               check=commit_check({"metrics": metrics}, declares_rows, attempt))
    return {"rows": committed.manifest["rows"], "metrics": metrics, "seconds": seconds, "attempt": committed.uri,
            "bytes_uploaded": uploaded, "bytes_downloaded": downloaded}


def cache_hit(final: str) -> store.Committed | None:
    """The newest committed attempt of a stage whose objects all match their manifest (else a miss)."""
    return store.find_committed(final)


def save_record(runs_dir: str, run_id: str, payload: Mapping[str, Any]) -> None:
    store.write_json(record_uri(runs_dir, run_id), payload)


def load_record(runs_dir: str, run_id: str) -> dict[str, Any] | None:
    record = store.read_json(record_uri(runs_dir, run_id))
    return record if isinstance(record, dict) else None


def list_records(runs_dir: str, unreadable: Callable[[str, str], dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every run.json under the store's runs/ prefix; one that cannot be read is skipped, or given to
    `unreadable(run_id, reason)` for a stand-in (shardwalk.core.dag.run_records lists it that way)."""
    records = []
    for info in store.list_dir(store.join(runs_dir, "runs")):
        if info.type != pafs.FileType.Directory:
            continue
        if not is_artifact_name(info.base_name):  # a listed name is data: never parsed into a URI
            if unreadable is not None:
                records.append(unreadable(info.base_name[:80], f"{store.join(runs_dir, 'runs')}: {info.base_name[:80]!r} is not a run id"))
            continue
        uri = store.join(runs_dir, "runs", info.base_name, "run.json")
        try:
            record = store.read_json(uri)
        except (OSError, ValueError) as exc:
            record = None if unreadable is None else unreadable(info.base_name, f"{uri}: cannot read ({exc})")
        if isinstance(record, dict):
            records.append(record)
    return records


def dumps(payload: Any) -> str:
    return json.dumps(payload, indent=1, sort_keys=True, default=str)
