"""`--export DIR_OR_URI`: a run's user-facing results under stable names, written all at once.

Layout (whatever the run produced of it; see README "Outputs"):

    index/                      the saved ShardedIndex (+ search.json: ef, nprobe, k, space, distance)
    knn_graph/                  Parquet parts: id, neighbors, distances (nearest first, self excluded)
    coresets/<method>-keep<rate>.parquet   id, weight (+ label: the user's value)
    coresets/accuracy.json      test accuracy of a fresh model per coreset and on the full training split
    coresets/test_ids.parquet   the held-out ids (id, label) the accuracies were measured on
    srrw/curves.parquet         per walk, token and step: loss, accuracy (training), sq_error
    srrw/theta.parquet, srrw/visits.parquet
    labels.json                 class index -> the user's label value
    report.html, run.json

On a local disk the layout is built in a hidden sibling and renamed into place; on an object store
(no rename) the files are written and `_SUCCESS` last, so readers wait for the marker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core import node_cache, store
from core.errors import ConfigError
from pipelines.common import LABELS_FILE, read_label_map

DONE = ("done", "cached")
SUCCESS = "_SUCCESS"


def _outputs(record: dict[str, Any]) -> dict[str, Path]:
    """Each finished stage's output as a local directory: a verified node-local copy of a committed attempt."""
    return {name: node_cache.materialize(s["attempt"])[0] if s.get("attempt") else Path(s["output"])
            for name, s in record["stages"].items() if s.get("status") in DONE}


def _read_parts(directory: Path) -> pa.Table:
    return pads.dataset(str(directory), format="parquet").to_table()


def _with_user_labels(table: pa.Table, labelled: pa.Table | None, values: Any) -> pa.Table:
    """Add each selected id's label (the user's value) from the scores table."""
    if labelled is None:
        return table
    ids, labels = labelled.column("id").to_numpy(), labelled.column("label").to_numpy()
    order = np.argsort(ids)
    found = labels[order[np.searchsorted(ids, table.column("id").to_numpy(), sorter=order)]]
    return table.append_column("label", pa.array(values[found] if values is not None else found))


def stage_layout(record: dict[str, Any], tmp: Path) -> list[str]:
    """Write the export layout of one run into the empty directory `tmp`; returns the names written."""
    from pipelines.index import DISTANCES, search_defaults

    outputs = _outputs(record)
    labels = read_label_map(outputs["ingest"]) if "ingest" in outputs else None
    written: list[str] = []
    if "build" in outputs:
        shutil.copytree(outputs["build"], tmp / "index", ignore=shutil.ignore_patterns(".*"))
        meta = json.loads((outputs["build"] / "index.json").read_text()) if (outputs["build"] / "index.json").is_file() else {}
        space = meta.get("space", record["config"].get("space", "l2"))
        search = {**search_defaults(record["config"]), "space": space, "distance": DISTANCES.get(space, space)}
        (tmp / "index" / "search.json").write_text(json.dumps(search, indent=1))
        written.append("index/")
    if "knn_graph" in outputs:
        shutil.copytree(outputs["knn_graph"], tmp / "knn_graph", ignore=shutil.ignore_patterns("_*", ".*"))
        written.append("knn_graph/")
    written += _coresets(outputs, tmp, labels)
    written += _srrw(outputs, tmp)
    if "ingest" in outputs and (outputs["ingest"] / LABELS_FILE).is_file():
        shutil.copy2(outputs["ingest"] / LABELS_FILE, tmp / "labels.json")
        written.append("labels.json")
    return written


def _coresets(outputs: dict[str, Path], tmp: Path, labels: Any) -> list[str]:
    if "select" not in outputs:
        return []
    written = []
    (tmp / "coresets").mkdir()
    scores = outputs.get("score")
    labelled = pads.dataset(str(scores), format="parquet").to_table(columns=["id", "label"]) if scores else None
    for sel in sorted(p for p in outputs["select"].iterdir() if p.is_dir()):
        pq.write_table(_with_user_labels(_read_parts(sel), labelled, labels), tmp / "coresets" / f"{sel.name}.parquet")
        written.append(f"coresets/{sel.name}.parquet")
    evaluate = outputs.get("evaluate")
    for name in ("accuracy.json", "test_ids.parquet"):
        if evaluate is not None and (evaluate / name).is_file():
            shutil.copy2(evaluate / name, tmp / "coresets" / name)
            written.append(f"coresets/{name}")
    return written


def _srrw(outputs: dict[str, Path], tmp: Path) -> list[str]:
    curves = {name: out for name, out in outputs.items() if (out / "curves.parquet").is_file()}
    if not curves:
        return []
    (tmp / "srrw").mkdir()
    tables = [pq.read_table(out / "curves.parquet").append_column("walk", pa.array([name] * pq.read_metadata(out / "curves.parquet").num_rows))
              for name, out in sorted(curves.items())]
    pq.write_table(pa.concat_tables(tables), tmp / "srrw" / "curves.parquet")
    written = ["srrw/curves.parquet"]
    if len(curves) == 1:  # the srrw pipeline: one walk, its final θ and visits too
        walk = outputs.get("walk")
        for name, src in (("theta.parquet", next(iter(curves.values())) / "theta.parquet"),
                          ("visits.parquet", walk / "visits.parquet" if walk else None)):
            if src is not None and src.is_file():
                shutil.copy2(src, tmp / "srrw" / name)
                written.append(f"srrw/{name}")
    return written


def _target(target: str) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, path, is_local) of an export target."""
    if "://" in target and not target.startswith("file://"):
        try:
            fs, path = pafs.FileSystem.from_uri(target)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"--export {target}: cannot open ({exc})") from None
        return fs, path, False
    path = target[len("file://"):] if target.startswith("file://") else target
    return pafs.LocalFileSystem(), os.path.abspath(path), True


def check_target(target: str, overwrite: bool) -> None:
    """Refuse an occupied export target before any work is done."""
    fs, path, _ = _target(target)
    _check_target(fs, path, target, overwrite)


def _check_target(fs: pafs.FileSystem, path: str, target: str, overwrite: bool) -> bool:
    """True when the target holds something (then `overwrite` must be set)."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return False
    if info.type == pafs.FileType.File:
        raise ConfigError(f"--export {target}: exists and is a file, not a directory")
    occupied = bool(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))
    if occupied and not overwrite:
        raise ConfigError(f"--export {target}: exists and is not empty; pass --overwrite to replace it")
    return occupied


def _report(run_dir: Path | str) -> bytes | None:
    """The run's report.html beside its run record (a local directory or a store prefix), if any."""
    if store.is_remote(str(run_dir)):
        return store.read_bytes(store.join(str(run_dir), "report.html"))
    path = Path(run_dir) / "report.html"
    return path.read_bytes() if path.is_file() else None


def export_run(record: dict[str, Any], run_dir: Path | str, target: str, *, overwrite: bool = False) -> list[str]:
    """Export a finished run's results to `target` (a directory or URI); returns the names written.

    `run_dir` holds the run record (a URI on an object-store runs dir, whose stage outputs are read from
    their committed attempts, verified against their manifests).
    """
    fs, path, local = _target(target)
    occupied = _check_target(fs, path, target, overwrite)
    staging = Path(path).parent if local else Path(tempfile.gettempdir())
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f".tmp-export-{Path(path).name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        written = stage_layout(record, tmp)
        report = _report(run_dir)
        if report is not None:
            (tmp / "report.html").write_bytes(report)
            written.append("report.html")
        (tmp / "run.json").write_text(json.dumps(record, indent=1, default=str))
        (tmp / SUCCESS).write_text(json.dumps({"run_id": record["run_id"], "files": written}, indent=1))
        if local:
            _swap_local(tmp, Path(path))
        else:
            _upload(tmp, fs, path, occupied)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def _swap_local(tmp: Path, final: Path) -> None:
    old = final.parent / f".old-export-{final.name}-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.rename(final, old)  # an empty directory, or the previous export under --overwrite
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _upload(tmp: Path, fs: pafs.FileSystem, path: str, occupied: bool) -> None:
    if occupied:
        fs.delete_dir_contents(path, missing_dir_ok=True)
    marker = tmp / SUCCESS
    body = marker.read_bytes()
    marker.unlink()
    pafs.copy_files(str(tmp), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    with fs.open_output_stream(f"{path}/{SUCCESS}") as handle:  # last: the export is complete
        handle.write(body)
