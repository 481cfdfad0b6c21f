"""`--export DIR_OR_URI`: a run's user-facing results under stable names, written all at once.

Layout (whatever the run produced of it; see README "Outputs"):

    index/                      the saved ShardedIndex (+ search.json: ef, nprobe, k, space, distance)
    knn_graph/                  Parquet parts: id, neighbors, distances (nearest first, self excluded)
    coresets/<method>-keep<rate>.parquet   id, weight (+ label: the user's value)
    coresets/accuracy.json      test accuracy of a fresh model per coreset and on the full training split
    coresets/test_ids.parquet   the held-out ids (id, label) the accuracies were measured on
    srrw/curves.parquet         per walk, token and step: loss, accuracy (training), sq_error; the walk named by
                                `walk` (its data, α, base walk, layout), `alpha`, `base`, `layout`, `stage`
    srrw/theta.parquet, srrw/visits.parquet (+ `name`), srrw/nodes.parquet (node → your name; named graphs)
    labels.json                 class index -> the user's label value
    report.html, run.json
    _SHARDWALK_EXPORT.json      the export's marker, written last: run id, pipeline, every file's bytes + sha256

An export is recognised by its marker, so `--overwrite` replaces only a previous export (every file in the
target listed in its marker); anything else that is not empty, the runs dir, a folder holding it or inside
it, and a bucket root are refused. On a local disk the layout is built in a hidden sibling and swapped in
(core/storage/publish.py). An object store has no rename: each export is written under its own prefix
`_versions/<id>/` and the marker at the target, the pointer naming that prefix (`current`), is written last
in one PUT; readers follow it (`export_location`). The replaced version is kept until the next export.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shardwalk.core.errors import ConfigError, DataError
from shardwalk.core.storage import node_cache, publish, store
from shardwalk.core.storage.files import sha256_file
from shardwalk.pipelines.common import LABELS_FILE, read_label_map

DONE = ("done", "cached")
MARKER = "_SHARDWALK_EXPORT.json"
VERSIONS = "_versions"  # on a store: one prefix per export; the marker at the target points at the current one
FORMAT = "shardwalk-export"


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
    from shardwalk.pipelines.index import DISTANCES, search_defaults  # Ray: only an exported index needs it

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
    written += _srrw(outputs, tmp, record)
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
    for name in ("accuracy.json", "accuracy_seeds.json", "test_ids.parquet"):
        if evaluate is not None and (evaluate / name).is_file():
            shutil.copy2(evaluate / name, tmp / "coresets" / name)
            written.append(f"coresets/{name}")
    return written


def walk_description(record: dict[str, Any], stage: str) -> dict[str, Any]:
    """Which walk a curves stage of `record` evaluated: its data, α, base walk and actor layout.

    The srrw pipeline has one walk (the config's `alpha`, `base`, tokens and partitions); the demo names its
    walks `curves_<data>_a<alpha>` over its `[srrw]` section (one token, the MHRW base).
    """
    config = record.get("config") or {}
    walk_stage = "walk" + stage[len("curves"):] if stage.startswith("curves_") else "walk"
    chosen = ((record.get("stages") or {}).get(walk_stage) or {}).get("metrics") or {}
    if stage.startswith("curves_") and isinstance(config.get("srrw"), dict):
        tag = stage[len("curves_"):]
        data, _, alpha = tag.partition("_a")
        section = config["srrw"]
        alpha_value, base, tokens, partitions = float(alpha.replace("_", ".") or "nan"), "mhrw", 1, section.get("partitions")
    else:
        data, alpha_value, base = "source", config.get("alpha"), config.get("base")
        tokens, partitions = config.get("tokens"), config.get("partitions")
    layout = f"{tokens} token(s) on {partitions} walker actor(s)" + (f", {chosen['layout']}" if chosen.get("layout") else "")
    alpha_text = f"{alpha_value:g}" if isinstance(alpha_value, int | float) else str(alpha_value)
    return {"walk": f"{data}: alpha={alpha_text}, base={base}, {layout}", "data": data,
            "alpha": float(alpha_value) if isinstance(alpha_value, int | float) else None, "base": str(base),
            "layout": layout}


def _srrw(outputs: dict[str, Path], tmp: Path, record: dict[str, Any] | None = None) -> list[str]:
    curves = {name: out for name, out in outputs.items() if (out / "curves.parquet").is_file()}
    if not curves:
        return []
    (tmp / "srrw").mkdir()
    tables = []
    for name, out in sorted(curves.items()):
        table = pq.read_table(out / "curves.parquet")
        described = walk_description(record or {}, name)
        for column, typ in (("walk", pa.string()), ("alpha", pa.float64()), ("base", pa.string()), ("layout", pa.string())):
            table = table.append_column(column, pa.array([described[column]] * table.num_rows, typ))
        tables.append(table.append_column("stage", pa.array([name] * table.num_rows, pa.string())))
    pq.write_table(pa.concat_tables(tables), tmp / "srrw" / "curves.parquet")
    written = ["srrw/curves.parquet"]
    if len(curves) == 1:  # the srrw pipeline: one walk, its final θ and visits too
        written += _one_walk(outputs, next(iter(curves.values())), tmp)
    return written


def _one_walk(outputs: dict[str, Path], curves: Path, tmp: Path) -> list[str]:
    """θ, the visits (with the user's node names, when the graph named them) and the node-name map."""
    written = []
    if (curves / "theta.parquet").is_file():
        shutil.copy2(curves / "theta.parquet", tmp / "srrw" / "theta.parquet")
        written.append("srrw/theta.parquet")
    agents = outputs.get("agents")
    names = agents / "nodes.parquet" if agents is not None and (agents / "nodes.parquet").is_file() else None
    if names is not None:
        shutil.copy2(names, tmp / "srrw" / "nodes.parquet")
        written.append("srrw/nodes.parquet")
    walk = outputs.get("walk")
    if walk is not None and (walk / "visits.parquet").is_file():
        visits = pq.read_table(walk / "visits.parquet")
        if names is not None:  # node numbers → the names the edge list gave them
            nodes = pq.read_table(names)
            lookup = dict(zip(nodes.column("node").to_pylist(), nodes.column("name").to_pylist()))
            visits = visits.append_column("name", pa.array([lookup.get(n) for n in visits.column("node").to_pylist()],
                                                           nodes.schema.field("name").type))
        pq.write_table(visits, tmp / "srrw" / "visits.parquet")
        written.append("srrw/visits.parquet")
    return written


@dataclass(frozen=True)
class Target:
    """An export target: as the user gave it, its filesystem and path there, and whether it is a local disk."""

    given: str
    fs: pafs.FileSystem
    path: str
    local: bool


def _target(target: str) -> Target:
    if store.is_remote(target):
        fs, path = store.resolve(target)
        return Target(target, fs, path.rstrip("/"), False)
    return Target(target, pafs.LocalFileSystem(), str(store.local_path(target)), True)


def check_target(target: str, overwrite: bool, runs_dir: str | None = None) -> dict[str, Any] | None:
    """Refuse a target that is not ours to replace, before any work; returns the previous export's marker."""
    return _checked(_target(target), overwrite, runs_dir)


def _checked(t: Target, overwrite: bool, runs_dir: str | None) -> dict[str, Any] | None:
    if not t.local and publish.is_bucket_root(t.given):
        raise ConfigError(f"export target {t.given}: a bucket root is never an export target; name a prefix in it "
                          f"(e.g. {t.given.rstrip('/')}/results)")
    if runs_dir is not None and publish.overlaps(t.given, runs_dir):
        raise ConfigError(f"export target {t.given}: overlaps the runs dir {runs_dir} (it is the runs dir, holds it or "
                          "lies inside it); choose a location outside it")
    previous = _previous_export(t)
    if previous is not None and not overwrite:
        raise ConfigError(f"export target {t.given}: exists and is not empty (the export of run {previous['run_id']}); "
                          "pass --overwrite to replace it")
    return previous


def _previous_export(t: Target) -> dict[str, Any] | None:
    """The marker of the export at the target, None when it is missing or empty; refuses anything else."""
    with store.store_errors(t.given):
        info = t.fs.get_file_info(t.path)
        if info.type == pafs.FileType.NotFound:
            return None
        if info.type == pafs.FileType.File:
            raise ConfigError(f"export target {t.given}: exists and is a file, not a directory")
        entries = t.fs.get_file_info(pafs.FileSelector(t.path, recursive=True, allow_not_found=True))
    if not entries:
        return None
    marker = _read_marker(t)
    names = sorted(e.path[len(t.path) + 1:] for e in entries if e.type == pafs.FileType.File)
    if marker is None and not t.local and all(rel.startswith(f"{VERSIONS}/") for rel in names):
        return None  # a first export interrupted before its pointer: only our own unpublished version objects
    if marker is None:
        raise ConfigError(f"export target {t.given}: holds files that are not a shardwalk export (no valid {MARKER}); "
                          "refusing to replace them: choose a new or empty location")
    ours = (lambda rel: rel in marker["files"]) if t.local else (lambda rel: rel.startswith(f"{VERSIONS}/"))
    foreign = [rel for rel in names if rel != MARKER and not ours(rel)]
    if foreign:
        raise ConfigError(f"export target {t.given}: holds {foreign[0]}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
                          + ", which its export does not list; refusing to replace it")
    return marker


def _read_marker(t: Target) -> dict[str, Any] | None:
    """The target's export marker when it is a well-formed one (on a store, a pointer to a version), else None."""
    with store.store_errors(t.given):
        try:
            with t.fs.open_input_stream(f"{t.path}/{MARKER}") as handle:
                marker = json.loads(handle.read())
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
            return None
    if not (isinstance(marker, dict) and marker.get("format") == FORMAT and isinstance(marker.get("files"), dict)
            and isinstance(marker.get("run_id"), str)):
        return None
    if t.local:
        return marker
    current = marker.get("current")
    parts = current.split("/") if isinstance(current, str) else []
    ok = len(parts) == 2 and parts[0] == VERSIONS and parts[1] not in ("", ".", "..") and "\\" not in parts[1]
    return marker if ok else None


def export_location(target: str) -> str:
    """Where the complete export at `target` is read: the directory itself locally, the current version on a store."""
    t = _target(target)
    marker = _read_marker(t)
    if marker is None:
        raise DataError(f"{target}: no shardwalk export there (no valid {MARKER})")
    return t.path if t.local else store.join(target, marker["current"])


def export_index(ref: str) -> tuple[str, dict[str, Any]] | None:
    """(index URI, stored search defaults) when `ref` is a store export or its `index/`; None for anything else."""
    if not store.is_remote(ref):
        return None
    body, sep, query = ref.partition("?")
    body = body.rstrip("/")
    for root in (body, body[: -len("/index")] if body.endswith("/index") else None):
        if root is None or publish.is_bucket_root(root):
            continue
        uri = root + sep + query
        if (marker := _read_marker(_target(uri))) is not None:
            index = store.join(uri, marker["current"], "index")
            return index, store.read_json(store.join(index, "search.json")) or {}
    return None


def _report(run_dir: Path | str) -> bytes | None:
    """The run's report.html beside its run record (a local directory or a store prefix), if any."""
    if store.is_remote(str(run_dir)):
        return store.read_bytes(store.join(str(run_dir), "report.html"))
    path = Path(run_dir) / "report.html"
    return path.read_bytes() if path.is_file() else None


def export_run(record: dict[str, Any], run_dir: Path | str, target: str, *, overwrite: bool = False,
               runs_dir: str | None = None) -> list[str]:
    """Export a finished run's results to `target` (a directory or URI); returns the names written.

    `run_dir` holds the run record (a URI on an object-store runs dir, whose stage outputs are read from
    their committed attempts, verified against their manifests); `runs_dir`, when given, is never overlapped.
    """
    t = _target(target)
    previous = _checked(t, overwrite, runs_dir)
    staging = Path(t.path).parent if t.local else Path(tempfile.gettempdir())
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f".tmp-export-{Path(t.path).name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        written = stage_layout(record, tmp)
        report = _report(run_dir)
        if report is not None:
            (tmp / "report.html").write_bytes(report)
            written.append("report.html")
        (tmp / "run.json").write_text(json.dumps(record, indent=1, default=str))
        marker = _marker(record, tmp, written)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))  # last: the export is complete
        _unchanged_since_check(t, previous)
        if t.local:
            publish.swap_dir(tmp, Path(t.path))
        else:
            _publish_version(tmp, t, marker, previous)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return written


def _marker(record: dict[str, Any], tmp: Path, written: list[str]) -> dict[str, Any]:
    files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    return {"format": FORMAT, "version": 1, "run_id": record["run_id"], "pipeline": record.get("pipeline"),
            "exported_at": time.time(), "results": written, "files": files}


def _unchanged_since_check(t: Target, previous: dict[str, Any] | None) -> None:
    """Refuse to replace a target someone wrote to while the export was being built."""
    now = _previous_export(t)
    if (now or {}).get("exported_at") != (previous or {}).get("exported_at"):
        raise ConfigError(f"export target {t.given}: changed while the export was being built; nothing was replaced")


def _publish_version(tmp: Path, t: Target, marker: dict[str, Any], previous: dict[str, Any] | None) -> None:
    """Upload the export under a fresh version prefix, then flip the pointer (one PUT); drop older versions."""
    version = f"{VERSIONS}/{store.new_attempt_id()}"
    with store.store_errors(t.given):
        pafs.copy_files(str(tmp), f"{t.path}/{version}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=t.fs)
    store.write_json(store.join(t.given, MARKER), {**marker, "current": version})
    keep = {version.split("/")[1], (previous or {}).get("current", "").rpartition("/")[2]}  # a reader may be on it
    with contextlib.suppress(OSError):  # the new export is complete; the next export retries the tidy-up
        for info in t.fs.get_file_info(pafs.FileSelector(f"{t.path}/{VERSIONS}", allow_not_found=True)):
            if info.base_name not in keep:
                t.fs.delete_dir(info.path)
