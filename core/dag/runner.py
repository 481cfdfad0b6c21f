"""A small, boring DAG runner: declare stages, skip the committed ones, run the rest concurrently.

The runner orchestrates and never computes. It is executor-agnostic: `submit(fn, args, options)` returns
a `concurrent.futures.Future`; pipelines/runtime.py passes Ray tasks (`ObjectRef.future()`), tests pass
a thread pool. A stage's output is committed by `execute_stage` inside the worker (temporary directory,
`_SUCCESS` manifest, atomic rename), so a failed or killed stage never leaves a committed output.
Run records (run.json) and reading them back live in core/dag/run_records.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import inspect
import os
import shutil
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shardwalk.core.dag import lease, stage_store
from shardwalk.core.dag.attempt import STATE_DIR, commit_check, state_dir
from shardwalk.core.dag.cache_key import absolute_inputs, input_paths, key_of, key_parts
from shardwalk.core.dag.fingerprint import code_digest, input_digest
from shardwalk.core.dag.run_records import (  # noqa: F401  (run records are part of the runner's public API)
    RunRecord,
    StageRecord,
    _local,
    check_name,
    is_unreadable,
    list_runs,
    load_run,
    mark_dead_runs,
    new_run_id,
    run_path,
)
from shardwalk.core.errors import ConfigError, InputError, UpstreamVanishedError, one_line
from shardwalk.core.storage import store
from shardwalk.core.storage.files import (
    atomic_dir,
    is_committed,
    remove_orphaned_temporaries,
    verify_dir,
    write_json_atomic,
)
from shardwalk.core.storage.location import canonical

StageFn = Callable[..., Mapping[str, Any] | None]
Submit = Callable[[Callable[..., Any], tuple[Any, ...], "StageOptions"], cf.Future]


@dataclass(frozen=True)
class StageOptions:
    """How the executor should run a stage."""

    name: str
    num_cpus: float = 1.0
    max_retries: int = 2


@dataclass(frozen=True)
class Stage:
    """A node of the DAG: a plain callable, its upstream inputs (kwarg → stage) and its parameters."""

    name: str
    fn: StageFn
    inputs: Mapping[str, str]
    params: Mapping[str, Any]
    version: str = "1"
    num_cpus: float = 1.0
    max_retries: int = 2
    declares_rows: bool = False  # its metric `rows` is the Parquet rows it wrote: a commit that disagrees is refused

    @property
    def fn_path(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


class Pipeline:
    """An ordered DAG of stages; a stage may only name upstream stages declared before it."""

    def __init__(self, name: str) -> None:
        self.name = check_name(name, "pipeline name")
        self.stages: dict[str, Stage] = {}

    def stage(
        self,
        name: str,
        fn: StageFn,
        *,
        inputs: Mapping[str, str] | list[str] | tuple[str, ...] = (),
        params: Mapping[str, Any] | None = None,
        version: str = "1",
        num_cpus: float = 1.0,
        max_retries: int = 2,
        declares_rows: bool = False,
    ) -> Stage:
        """Declare a stage; `inputs` maps the fn's keyword to an upstream stage (a list means same names).

        `declares_rows`: the stage's metric `rows` counts the Parquet rows it wrote, and its output is only
        committed when its manifest holds exactly that many (a lost or doubled part is refused).
        """
        check_name(name, "stage name")
        if name in self.stages:
            raise ConfigError(f"pipeline '{self.name}': stage '{name}' declared twice")
        mapping = dict(inputs) if isinstance(inputs, Mapping) else {s: s for s in inputs}
        for upstream in mapping.values():
            if upstream not in self.stages:
                raise ConfigError(f"pipeline '{self.name}': stage '{name}' needs unknown or later stage '{upstream}'")
        params = dict(params or {})
        _check_signature(name, fn, mapping, params)
        stage = Stage(name, fn, mapping, params, version, num_cpus, max_retries, declares_rows)
        self.stages[name] = stage
        return stage

    def keys(self) -> dict[str, str]:
        """Every stage's cache key, computed in declaration (hence topological) order."""
        return {name: key_of(name, parts) for name, parts in self.key_parts().items()}

    def key_parts(self) -> dict[str, dict[str, str]]:
        """What every stage's key is made of: version, code, params, the files its parameters name, upstream keys.

        Reads the stage's code and stats (or hashes, when small) each input file once per call; the key
        function itself (core/dag/cache_key.py) is pure.
        """
        parts: dict[str, dict[str, str]] = {}
        files: dict[str, str] = {}
        for s in self.stages.values():
            upstream = {arg: key_of(up, parts[up]) for arg, up in s.inputs.items()}
            named = dict(input_paths(s.params))
            for loc in named.values():
                if loc not in files:
                    files[loc] = input_digest(loc)
            inputs = {where: files[loc] for where, loc in named.items()}
            parts[s.name] = key_parts(s.name, f"{s.version}|{s.fn_path}", s.params, upstream, code_digest(s.fn), inputs)
        return parts


def _check_signature(name: str, fn: StageFn, inputs: Mapping[str, str], params: Mapping[str, Any]) -> None:
    try:
        inspect.signature(fn).bind(Path("."), **dict.fromkeys(inputs, Path(".")), **params)
    except TypeError as exc:
        raise ConfigError(f"stage '{name}': {fn.__qualname__} does not accept its inputs/params ({exc})") from None


def output_dir(runs_dir: str | os.PathLike, stage: Stage, key: str) -> Path:
    """Where a stage's committed output lives; shared by every run (that is the cache)."""
    return Path(runs_dir) / "cache" / f"{stage.name}-{key[:24]}"


def execute_stage(fn: StageFn, final: str, inputs: Mapping[str, str], params: Mapping[str, Any], key: str,
                  declares_rows: bool = False) -> dict[str, Any]:
    """Run one stage into a temporary directory and commit it; runs inside the executor's worker."""
    started = time.perf_counter()
    extra: dict[str, Any] = {"key": key}
    committed: dict[str, Any] = {}
    token = STATE_DIR.set(state_dir(final))
    try:
        with lease.held(final), atomic_dir(final, extra, commit_check(extra, declares_rows, final, committed)) as tmp:
            metrics = fn(tmp, **{k: Path(v) for k, v in inputs.items()}, **params)
            extra["metrics"] = dict(metrics or {})
            extra["seconds"] = round(time.perf_counter() - started, 4)
    finally:
        STATE_DIR.reset(token)
    shutil.rmtree(state_dir(final), ignore_errors=True)
    # this attempt's own figures (the manifest it committed): a concurrent run may have committed first
    return {"rows": committed["rows"], "metrics": extra["metrics"], "seconds": extra["seconds"]}


def _cache_hit(final: Path, problems: list[str] | None = None) -> dict[str, Any] | None:
    """The manifest of a committed output whose files all match their recorded sha256.

    Reading a cached output back is far cheaper than recomputing it, and a same-size bit flip is
    only visible to the checksum; a corrupt output is not a hit (the stage reruns and replaces it, and
    the reason is appended to `problems` so the run can say so).
    """
    if not is_committed(final):
        return None
    try:
        return verify_dir(final)
    except InputError as exc:
        if problems is not None:
            problems.append(one_line(exc))
        return None


class Runner:
    """Runs a pipeline once: cache lookups, concurrent submission, the run record, events."""

    def __init__(
        self,
        pipeline: Pipeline,
        runs_dir: str | os.PathLike,
        submit: Submit,
        *,
        force: bool = False,
        config: Mapping[str, Any] | None = None,
        on_event: Callable[[RunRecord, StageRecord], None] | None = None,
        run_id: str | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.remote = store.is_remote(str(runs_dir))
        # absolute: stages run in their worker's folder (on a joined cluster, where `ray start` ran)
        self.runs_dir: Any = str(runs_dir).rstrip("/") if self.remote else _local(runs_dir).absolute()
        self.submit = submit
        self.force = force
        self.on_event = on_event or (lambda run, stage: None)
        self.on_start = on_start  # readies the executor (connects) before the first stage that must run
        parts = pipeline.key_parts()
        self.keys = {name: key_of(name, p) for name, p in parts.items()}
        self.record = RunRecord(run_id or new_run_id(pipeline.name), pipeline.name, dict(config or {}),
                                runs_dir=canonical(self.runs_dir))
        self.recomputed: set[str] = set()  # stages rerun because their committed output vanished mid-run
        for s in pipeline.stages.values():
            key = self.keys[s.name]
            out = stage_store.stage_uri(self.runs_dir, s.name, key) if self.remote else str(output_dir(self.runs_dir, s, key))
            self.record.stages[s.name] = StageRecord(s.name, key, out, key_parts=parts[s.name])

    def _save(self) -> None:
        if self.remote:
            return stage_store.save_record(self.runs_dir, self.record.run_id, self.record.to_json())
        write_json_atomic(run_path(self.runs_dir, self.record.run_id), self.record.to_json())

    def _emit(self, rec: StageRecord) -> None:
        self._save()
        self.on_event(self.record, rec)

    def run(self) -> RunRecord:
        """Run to completion; independent branches go on after a failure, dependants are skipped.

        Anything that stops the run itself (a lost connection, a full disk, Ctrl-C, SIGTERM) ends the
        record `failed` or `interrupted` with the reason before the exception propagates.
        """
        if not self.remote:  # a local runs dir: close dead drivers' records, remove dead writers' temporaries
            mark_dead_runs(self.runs_dir)
            remove_orphaned_temporaries(Path(self.runs_dir) / "cache")
        self._save()
        try:
            self._loop()
        except BaseException as exc:
            self._abort(exc)
            raise
        self.record.status = "failed" if self.record.failed_stage() else "succeeded"
        self.record.finished = time.time()
        self._save()
        return self.record

    def _abort(self, exc: BaseException) -> None:
        """Close the record of a run stopped from outside its stages; best effort (the disk may be full)."""
        interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
        self.record.status = "interrupted" if interrupted else "failed"
        self.record.error = "interrupted (Ctrl-C or SIGTERM)" if interrupted else one_line(exc)
        self.record.finished = time.time()
        for rec in self.record.stages.values():
            if rec.status in ("running", "pending"):
                rec.status, rec.error = ("interrupted" if rec.status == "running" else "skipped"), self.record.error
        with contextlib.suppress(OSError):
            self._save()

    def _loop(self) -> None:
        futures: dict[cf.Future, str] = {}
        while True:
            ready = self._ready()
            for s in ready:
                self._start(s, futures)
            if not futures:
                if ready:
                    continue  # cache hits may have made more stages ready
                break
            done, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                self._finish(futures.pop(fut), fut)

    def _ready(self) -> list[Stage]:
        ready = []
        for s in self.pipeline.stages.values():
            rec = self.record.stages[s.name]
            if rec.status != "pending":
                continue
            ups = [self.record.stages[u].status for u in s.inputs.values()]
            if any(u in ("failed", "skipped") for u in ups):
                rec.status, rec.error = "skipped", "an upstream stage failed"
                self._emit(rec)
            elif all(u in ("done", "cached") for u in ups):
                ready.append(s)
        return ready

    def _start(self, s: Stage, futures: dict[cf.Future, str]) -> None:
        if self.remote:
            return self._start_remote(s, futures)
        rec = self.record.stages[s.name]
        final = Path(rec.output)
        problems: list[str] = []
        manifest = None if self.force else _cache_hit(final, problems)
        if manifest is not None:
            rec.status, rec.cache_hit, rec.rows, rec.seconds = "cached", True, manifest["rows"], 0.0
            rec.metrics = manifest.get("metrics", {})
            self._emit(rec)
            return
        if problems:
            rec.warning = f"the cached output was corrupt and is recomputed ({problems[0]})"
        if not self._inputs_present(s):
            return
        if self.on_start is not None:  # nothing committed is retired before the executor is reachable
            self.on_start()
            self.on_start = None
        if final.exists():  # forced, or committed but corrupt: move it aside before rerunning
            _retire(final)
        if self.force:  # a forced stage starts from scratch, not from an earlier attempt's checkpoints
            _retire(state_dir(final))
        inputs = {arg: self.record.stages[up].output for arg, up in s.inputs.items()}
        args = (s.fn, str(final), inputs, absolute_inputs(s.params), rec.key, s.declares_rows)
        rec.status = "running"
        self._emit(rec)
        futures[self.submit(execute_stage, args, StageOptions(s.name, s.num_cpus, s.max_retries))] = s.name

    def _start_remote(self, s: Stage, futures: dict[cf.Future, str]) -> None:
        """`_start` for an object-store runs dir: a hit is a verified committed attempt; a miss writes a new one."""
        rec = self.record.stages[s.name]
        hit = None if self.force else stage_store.cache_hit(rec.output)
        if hit is not None:
            rec.status, rec.cache_hit, rec.rows, rec.seconds = "cached", True, hit.manifest["rows"], 0.0
            rec.metrics, rec.attempt = hit.manifest.get("metrics", {}), hit.uri
            self._emit(rec)
            return
        if not self._inputs_present(s):
            return
        if self.on_start is not None:  # nothing is retired before the executor is reachable
            self.on_start()
            self.on_start = None
        if self.force:  # a forced stage starts from scratch, not from an earlier attempt's checkpoints
            store.delete_prefix(stage_store.state_uri(rec.output))
        inputs = {arg: self.record.stages[up].attempt or self.record.stages[up].output for arg, up in s.inputs.items()}
        args = (s.fn, rec.output, inputs, absolute_inputs(s.params), rec.key, s.declares_rows)
        rec.status = "running"
        self._emit(rec)
        futures[self.submit(stage_store.execute_remote, args, StageOptions(s.name, s.num_cpus, s.max_retries))] = s.name

    def _committed(self, rec: StageRecord) -> bool:
        """Whether the committed output a stage record points at (its pinned attempt on a store) still exists."""
        if self.remote:
            return bool(store.committed_attempts(rec.attempt or rec.output))
        return is_committed(rec.output)

    def _recompute_vanished(self, s: Stage) -> bool:
        """Put upstream stages whose committed output vanished back to pending (once each); True if any was.

        An output deleted from the store or disk after the runner counted it is lost work, not bad input:
        it is recomputed, with a warning on its record, before `s` reads it.
        """
        ups = {up: self.record.stages[up] for up in s.inputs.values()}
        if any(rec.status in ("pending", "running") for rec in ups.values()):
            return True  # being recomputed already
        vanished = sorted(up for up, rec in ups.items() if not self._committed(rec))
        if not vanished:
            return False
        again = [up for up in vanished if up in self.recomputed]
        if again:
            raise UpstreamVanishedError(f"the committed output of stage '{again[0]}' vanished again after it was "
                                        f"recomputed ({self.record.stages[again[0]].output})")
        for up in vanished:
            rec = self.record.stages[up]
            lost = rec.attempt or rec.output
            rec.status, rec.cache_hit, rec.attempt, rec.rows, rec.seconds = "pending", False, None, None, None
            rec.warning = f"its committed output {lost} vanished before stage '{s.name}' read it; recomputed"
            self.recomputed.add(up)
            self._emit(rec)
        return True

    def _inputs_present(self, s: Stage) -> bool:
        """False when `s` cannot start now: an upstream output vanished (recomputed first) or vanished again (failed)."""
        try:
            return not self._recompute_vanished(s)
        except UpstreamVanishedError as exc:
            rec = self.record.stages[s.name]
            rec.status, rec.error_type, rec.error, rec.bad_input = "failed", type(exc).__name__, one_line(exc), False
            self._emit(rec)
            return False

    def _retry_after_vanished(self, rec: StageRecord, cause: BaseException) -> bool:
        """A stage that failed while an upstream output it read vanished waits for that output to be recomputed."""
        try:
            present = self._inputs_present(self.pipeline.stages[rec.name])
        except OSError:  # the store is unreachable: report the stage's own failure
            return False
        if present:
            return False
        if rec.status != "failed":
            rec.status, rec.error, rec.error_type = "pending", None, None
            rec.warning = f"an upstream output vanished while it ran ({one_line(cause)}); rerun after recomputing it"
            self._emit(rec)
        return True

    def _finish(self, name: str, fut: cf.Future) -> None:
        rec = self.record.stages[name]
        try:
            result = fut.result()
        except BaseException as exc:  # the record must say which stage failed and why
            cause = getattr(exc, "cause", None) or exc  # Ray wraps the stage's exception
            if self._retry_after_vanished(rec, cause):
                return
            rec.status, rec.error_type, rec.error = "failed", type(cause).__name__, one_line(cause)
            rec.bad_input = isinstance(cause, InputError) and not isinstance(cause, UpstreamVanishedError)
            if not rec.bad_input:
                rec.error += "\n" + "".join(traceback.format_exception(cause))[-4000:]
        else:
            rec.status, rec.rows, rec.seconds, rec.metrics = "done", result["rows"], result["seconds"], result["metrics"]
            rec.attempt = result.get("attempt")
            rec.bytes_uploaded, rec.bytes_downloaded = result.get("bytes_uploaded", 0), result.get("bytes_downloaded", 0)
        self._emit(rec)


def _retire(final: Path) -> None:
    """Move a committed output aside before a forced rerun so readers never see a half-replaced one."""
    graveyard = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(final, graveyard)
    except FileNotFoundError:
        return
    shutil.rmtree(graveyard, ignore_errors=True)


