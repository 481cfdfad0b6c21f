"""Property: any sequence of exports, overwrites and interrupts leaves one complete export and foreign files alone."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shardwalk.core.errors import ConfigError, DataError
from shardwalk.core.storage import store
from shardwalk.pipelines import export
from tests.test_export import _fake_coreset_run

# (run id, --overwrite, interrupt before the n-th instrumented call or never, onto the foreign folder instead)
OPS = st.lists(st.tuples(st.sampled_from(["r1", "r2", "r3"]), st.sampled_from([True, True, False]),
                         st.none() | st.integers(0, 2), st.sampled_from([False, False, False, True])), min_size=1, max_size=4)
PROPERTY = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Ctrl-C as a replacement publishes: locally between the two renames; on a store during the upload or the pointer PUT
REPLACE_INTERRUPTED = [[("r1", False, None, False), ("r2", True, n, False), ("r3", True, None, False)] for n in (0, 1)]


class Countdown:
    """Raises KeyboardInterrupt (Ctrl-C) in place of the n-th call of any wrapped function."""

    def __init__(self, n: int | None) -> None:
        self.n = n

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.n is not None:
                self.n -= 1
                if self.n < 0:
                    self.n = None
                    raise KeyboardInterrupt
            return fn(*args, **kwargs)
        return call


def _read(target: str) -> str | None:
    """The run id of the complete export a reader gets at `target` (every listed file verified), or None."""
    try:
        where = export.export_location(target)
    except DataError:
        return None
    fs, root = store.resolve(where) if store.is_remote(where) else (pafs.LocalFileSystem(), where)
    with fs.open_input_stream(f"{root}/{export.MARKER}") as handle:
        marker = json.loads(handle.read())
    for rel, entry in marker["files"].items():
        with fs.open_input_stream(f"{root}/{rel}") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == entry["sha256"], rel
    return marker["run_id"]


def _check_sequence(ops: list, target: str, foreign: str, snapshot: Callable[[], Any], work: Path) -> None:
    before, done = snapshot(), None
    for run, overwrite, interrupt, onto_foreign in ops:
        record = _fake_coreset_run(work / uuid.uuid4().hex[:8], run)
        countdown = Countdown(interrupt)
        with pytest.MonkeyPatch.context() as m:
            for owner, name in ((os, "rename"), (pafs, "copy_files"), (store, "write_json")):  # the publishing steps
                m.setattr(owner, name, countdown.wrap(getattr(owner, name)))
            try:
                export.export_run(record, work, foreign if onto_foreign else target, overwrite=overwrite)
                assert not onto_foreign, "a foreign folder was overwritten"
                done = run
            except ConfigError:
                assert onto_foreign or (done is not None and not overwrite)
            except KeyboardInterrupt:
                assert _read(target) in {done, None if onto_foreign else run}
                done = _read(target)
        assert _read(target) == done and snapshot() == before
        assert not list(work.glob(".tmp-export-*")) and not list(work.glob(".old-*"))


@PROPERTY
@given(ops=OPS)
@example(ops=REPLACE_INTERRUPTED[1])
def test_local_exports_stay_complete_under_any_interleaving(tmp_path: Path, ops: list) -> None:
    work = tmp_path / uuid.uuid4().hex[:8]
    (work / "mine" / "data").mkdir(parents=True)
    (work / "mine" / "notes.txt").write_text("mine")

    def snapshot() -> dict[str, bytes]:
        return {p.relative_to(work / "mine").as_posix(): p.read_bytes() for p in (work / "mine").rglob("*") if p.is_file()}

    _check_sequence(ops, str(work / "out"), str(work / "mine"), snapshot, work)


@settings(PROPERTY, max_examples=6)
@given(ops=OPS)
@example(ops=REPLACE_INTERRUPTED[0])
@example(ops=REPLACE_INTERRUPTED[1])
def test_store_exports_stay_complete_under_any_interleaving(s3_bucket: str, tmp_path: Path, ops: list) -> None:
    prefix = f"{s3_bucket}/{uuid.uuid4().hex[:8]}"
    store.write_bytes(f"{prefix}/mine/notes.txt", b"mine")
    work = tmp_path / uuid.uuid4().hex[:8]
    work.mkdir()
    _check_sequence(ops, f"{prefix}/out", f"{prefix}/mine", lambda: store.read_bytes(f"{prefix}/mine/notes.txt"), work)
