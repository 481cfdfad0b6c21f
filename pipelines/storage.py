"""Driver-side helpers for an object-store runs dir: publishing a run's report beside its run record."""

from __future__ import annotations

import io

from shardwalk.core.dag.runner import RunRecord
from shardwalk.core.storage import store
from shardwalk.pipelines.reports.render import REPORT_FILES, with_header


def _committed_text(c: store.Committed, rel: str) -> str:
    """A committed text file, verified against its manifest as it streams."""
    sink = io.BytesIO()
    store.stream_object(c, rel, sink)
    return sink.getvalue().decode()


def is_remote(runs_dir: str) -> bool:
    return store.is_remote(runs_dir)


def publish_remote(record: RunRecord, runs_dir: str) -> str | None:
    """Copy a committed report (and its PNGs) under runs/<run id>/ in the store, the reports with the run's
    header under their title; return its URI."""
    for stage in record.stages.values():
        if stage.status not in ("done", "cached") or not stage.attempt:
            continue
        c = store.require_committed(stage.attempt)
        names = [n for n in c.manifest["files"] if n in REPORT_FILES or (n.endswith(".png") and "/" not in n)]
        if "report.html" not in names:
            continue
        dest = store.join(runs_dir, "runs", record.run_id)
        for rel in names:  # a server-side copy when the object kept its committed ETag, else streamed and hashed
            if rel in REPORT_FILES:
                text = _committed_text(c, rel)
                store.write_bytes(store.join(dest, rel), with_header(rel, text, record.to_json()).encode())
            else:
                store.copy_object(c, rel, store.join(dest, rel))
        return store.join(dest, "report.html")
    return None
