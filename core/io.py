"""Reading sources and writing committed outputs.

Sources: a Parquet file, a directory of Parquet files or a URI (`file://`, `s3://`, `gs://`: whatever
`pyarrow.fs` resolves), a `pyarrow.Table`, a numpy array, or `builtin:NAME` (core/datasets.py).
Sharding plans row ranges from Parquet footers only, so the driver never materialises the data: each
worker reads its own `ShardSpec`.

Outputs: `atomic_dir(final)` yields a temporary directory beside `final`; on success it writes the
`_SUCCESS` manifest (row count, schema, sha256 of every file) and renames it into place in one step.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import math
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from core import datasets
from core.errors import CommitRefusedError, CorruptArtifactError, DataError
from core.names import artifact_name
from core.schema import from_numpy

P = ParamSpec("P")
R = TypeVar("R")

MANIFEST = "_SUCCESS"


def one_line_text(exc: BaseException) -> str:
    return " ".join(str(exc).split())

TEMP_PREFIX = ".tmp-"  # atomic_dir temporaries: .tmp-<final>@<host>@<pid>@<random>
Source = str | os.PathLike | pa.Table | np.ndarray


# ----------------------------------------------------------------------------- reading


def _resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    text = os.fspath(path)
    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise DataError(f"{text}: cannot open ({exc})") from None
    from core.sink import check_local  # core.sink imports this module

    check_local(text)  # never another node's scratch or cache (core/sink.py)
    return pafs.LocalFileSystem(), os.path.abspath(text)


def _parquet_files(path: str | os.PathLike) -> tuple[pafs.FileSystem, list[str]]:
    fs, root = _resolve(path)
    try:
        info = fs.get_file_info(root)
    except OSError as exc:
        raise DataError(f"{os.fspath(path)}: cannot read ({exc})") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{os.fspath(path)}: no such file or directory")
    if info.type == pafs.FileType.File:
        return fs, [root]
    selector = pafs.FileSelector(root, recursive=True)
    files = sorted(
        f.path
        for f in fs.get_file_info(selector)
        if f.type == pafs.FileType.File and not Path(f.path).name.startswith(("_", ".")) and f.path.endswith(".parquet")
    )
    if not files:
        raise DataError(f"{os.fspath(path)}: directory holds no .parquet files")
    return fs, files


def _row_counts(fs: pafs.FileSystem, files: Sequence[str]) -> list[int]:
    counts = []
    for path in files:
        try:
            with fs.open_input_file(path) as handle:
                counts.append(pq.ParquetFile(handle).metadata.num_rows)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    return counts


@dataclass(frozen=True)
class ShardSpec:
    """Rows [start, stop) of a source; small and picklable so the driver ships it instead of data."""

    index: int
    start: int
    stop: int
    uri: str | None = None
    files: tuple[str, ...] = ()
    file_rows: tuple[int, ...] = ()
    table: pa.Table | None = field(default=None, compare=False, repr=False)

    @property
    def num_rows(self) -> int:
        return self.stop - self.start


def in_memory_table(source: pa.Table | np.ndarray, where: str = "input") -> pa.Table:
    """A table for in-memory sources (numpy arrays become `id` 0..n-1 + `vector`)."""
    if isinstance(source, pa.Table):
        return source
    return from_numpy(np.asarray(source), where=where)


def plan_shards(source: Source, n: int) -> list[ShardSpec]:
    """Split `source` into `n` contiguous, balanced row ranges (fewer if it has fewer rows), reading only footers."""
    if n < 1:
        raise DataError(f"number of shards must be >= 1, got {n}")
    if isinstance(source, pa.Table | np.ndarray) or datasets.is_builtin(source):
        table = datasets.load_builtin(source) if datasets.is_builtin(source) else in_memory_table(source)
        if table.num_rows == 0:
            raise DataError("input table is empty (0 rows)")
        bounds = np.linspace(0, table.num_rows, min(n, table.num_rows) + 1).astype(int)
        return [ShardSpec(i, int(a), int(b), table=table.slice(a, b - a)) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    fs, files = _parquet_files(source)
    counts = _row_counts(fs, files)
    total = sum(counts)
    if total == 0:
        raise DataError(f"{os.fspath(source)}: dataset is empty (0 rows)")
    bounds = np.linspace(0, total, min(n, total) + 1).astype(int)  # never an empty shard
    uri = os.fspath(source)
    return [
        ShardSpec(i, int(a), int(b), uri=uri, files=tuple(files), file_rows=tuple(counts))
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]


def read_shard(spec: ShardSpec, columns: Sequence[str] | None = None) -> pa.Table:
    """Read exactly rows [start, stop) of a planned shard, touching only the row groups it needs."""
    if spec.table is not None:
        return spec.table.select(list(columns)) if columns else spec.table
    assert spec.uri is not None
    fs, _ = _resolve(spec.uri)
    pieces: list[pa.Table] = []
    file_start = 0
    for path, rows in zip(spec.files, spec.file_rows):
        lo, hi = max(spec.start, file_start), min(spec.stop, file_start + rows)
        if lo < hi:
            pieces.append(_read_rows(fs, path, lo - file_start, hi - file_start, columns))
        file_start += rows
    if not pieces:
        raise DataError(f"{spec.uri}: shard {spec.index} is empty")
    try:
        return pa.concat_tables(pieces, promote_options="permissive")
    except pa.ArrowInvalid as exc:
        raise DataError(f"{spec.uri}: files disagree on schema ({exc})") from None
    finally:
        release_arrow_memory()  # the reader's transient buffers: several times the table, kept by mimalloc


def release_arrow_memory() -> None:
    """Hand freed Arrow buffers back to the OS (mimalloc keeps them otherwise: hundreds of MB after a read)."""
    pa.default_memory_pool().release_unused()


def releasing_arrow_memory(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, returning the Arrow buffers it freed to the OS when it ends: Ray reuses a task's process, and
    an idle worker otherwise keeps a part's worth of buffers (266 MB a worker after ingest, at 100k × 128)."""
    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        finally:
            release_arrow_memory()
    return run


def _read_rows(fs: pafs.FileSystem, path: str, lo: int, hi: int, columns: Sequence[str] | None) -> pa.Table:
    try:
        with fs.open_input_file(path) as handle:
            # pages written with CRCs (shardwalk's own, or any writer that adds them) are verified: a flipped
            # byte in a data page is refused instead of being read as data; files without CRCs read as before
            pf = pq.ParquetFile(handle, page_checksum_verification=True)
            groups, first, start = [], None, 0
            for g in range(pf.metadata.num_row_groups):
                size = pf.metadata.row_group(g).num_rows
                if start < hi and start + size > lo:
                    groups.append(g)
                    first = start if first is None else first
                start += size
            if columns:
                missing = [c for c in columns if c not in pf.schema_arrow.names]
                if missing:
                    raise DataError(f"{path}: missing column(s) {missing}")
            table = pf.read_row_groups(groups, columns=list(columns) if columns else None)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read Parquet ({one_line_text(exc)})") from None
    return table.slice(lo - first, hi - lo)


def read_table(source: Source, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a whole source. For small data (queries, summaries); shard anything large."""
    return read_shard(plan_shards(source, 1)[0], columns)


def source_schema(source: Source) -> pa.Schema:
    """The schema of a source's first Parquet file (footer only), of a builtin or of an in-memory table."""
    if isinstance(source, pa.Table | np.ndarray) or datasets.is_builtin(source):
        return plan_shards(source, 1)[0].table.schema
    fs, files = _parquet_files(source)
    try:
        with fs.open_input_file(files[0]) as handle:
            return pq.ParquetFile(handle).schema_arrow
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{files[0]}: not a readable Parquet file ({exc})") from None


def source_fingerprint(source: Source) -> str:
    """A cheap identity of a source for cache keys: path, size and mtime of every file (or content hash)."""
    if datasets.is_builtin(source):
        return str(source)
    if isinstance(source, pa.Table | np.ndarray):
        table = in_memory_table(source)
        digest = hashlib.sha256()
        for batch in table.to_batches():
            for col in batch.columns:
                for buf in col.buffers():
                    if buf is not None:
                        digest.update(memoryview(buf))
        return "mem:" + digest.hexdigest()
    fs, files = _parquet_files(source)
    parts = [f"{f.path}:{f.size}:{f.mtime_ns}" for f in fs.get_file_info(files)]
    return "files:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


# ----------------------------------------------------------------------------- writing


ROW_GROUP_BYTES = 64 << 20  # uncompressed bytes per row group written, at most (pyarrow's default: 1M rows)


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group: a power of two (≥ 1,024) of at most ROW_GROUP_BYTES, so a reader of a row range
    (the exact search's 65,536-row blocks, a streamed query block) decodes that range, not a whole part."""
    per_row = max(table.nbytes / max(table.num_rows, 1), 1.0)
    return max(1024, 1 << int(math.log2(max(ROW_GROUP_BYTES / per_row, 1.0))))


def make_dirs(directory: str | os.PathLike) -> Path:
    """`mkdir -p`, except that a vanished temporary output directory (`.tmp-*`) is never recreated.

    A stage's temporary directory removed mid-stage (an overeager cleanup, `gc`) took the parts already
    written with it: recreating it would let the stage commit the rest as if it were whole.
    """
    directory = Path(directory)
    missing = []
    here = directory.absolute()
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    vanished = next((d for d in missing if d.name.startswith(TEMP_PREFIX)), None)
    if vanished is not None:
        raise CommitRefusedError(f"{vanished}: a stage's temporary output directory vanished while it was written; "
                                 "not recreating it (the stage fails and nothing is committed)")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def write_parquet(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write one Parquet file (zstd, a CRC on every page so readers can verify it) and return its path."""
    path = Path(path)
    make_dirs(path.parent)
    pq.write_table(table, path, compression="zstd", write_page_checksum=True, row_group_size=row_group_rows(table))
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _parquet_summary(path: Path) -> tuple[int, str]:
    meta = pq.read_metadata(path)
    return meta.num_rows, str(meta.schema.to_arrow_schema())


def build_manifest(directory: str | os.PathLike, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Row counts, schemas and sha256 of every file under `directory` (the manifest itself excluded)."""
    root = Path(directory)
    files: dict[str, dict[str, Any]] = {}
    rows = 0
    schemas: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST and p != root / TOKEN):
        rel = path.relative_to(root).as_posix()
        entry: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        if path.suffix == ".parquet":
            entry["rows"], schema = _parquet_summary(path)
            rows += entry["rows"]
            schemas.setdefault(schema, rel)
        files[rel] = entry
    manifest: dict[str, Any] = {"rows": rows, "schemas": sorted(schemas), "files": files}
    if extra:
        manifest.update(extra)
    return manifest


def read_json(path: str | os.PathLike, missing: Exception, what: str = "file") -> Any:
    """The parsed JSON at `path`; raises `missing` if it is absent, CorruptArtifactError if it is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise missing from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptArtifactError(f"{path}: {what} is not valid JSON ({exc})") from None


def confined(root: str | os.PathLike, rel: str, listed_in: str) -> Path:
    """`root / rel` for a path read from an artifact, refused unless it stays inside `root`.

    A manifest is data from disk: a key such as `../x`, `/etc/x` or a symlink pointing out of the directory
    would otherwise make a later copy, link or delete act outside it.
    """
    base = Path(root)
    path = base.joinpath(*artifact_name(rel, f"{base} ({listed_in})").split("/"))  # also refuses "/abs" and "a//b"
    if not path.resolve().is_relative_to(base.resolve()):
        raise CorruptArtifactError(f"{base}: the {listed_in} names {rel!r}, which leads outside the directory")
    return path


def check_checksums(root: Path, digests: Mapping[str, str | None], listed_in: str) -> None:
    """Every file named in `digests` exists under `root` and has that sha256 (None never matches)."""
    for rel, digest in digests.items():
        path = confined(root, rel, listed_in)
        if not path.is_file():
            raise CorruptArtifactError(f"{path}: listed in the {listed_in} but missing")
        if sha256_file(path) != digest:
            raise CorruptArtifactError(f"{path}: checksum does not match its manifest")


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The `_SUCCESS` manifest of a committed directory, or CorruptArtifactError."""
    path = Path(directory) / MANIFEST
    missing = CorruptArtifactError(f"{directory}: not a committed output (no {MANIFEST} manifest)")
    manifest = read_json(path, missing, "manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CorruptArtifactError(f"{path}: manifest has no 'files' table")
    return manifest


def verify_dir(directory: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Check every file (or just `names`) against the manifest's sha256; return the manifest."""
    manifest = read_manifest(directory)
    digests = {rel: entry.get("sha256") if isinstance(entry, dict) else None
               for rel, entry in manifest["files"].items() if names is None or rel in names}
    check_checksums(Path(directory), digests, "manifest")
    return manifest


def is_committed(directory: str | os.PathLike) -> bool:
    return (Path(directory) / MANIFEST).is_file()


TOKEN = ".shardwalk-token"  # in a temporary output directory: the random token its creator wrote (never committed)


def new_token(directory: Path) -> str:
    """Write a fresh random token into a just-created temporary directory; its writer checks it at commit."""
    token = uuid.uuid4().hex
    (directory / TOKEN).write_text(token)
    return token


def claim_token(directory: Path, token: str, remove: bool = True) -> None:
    """Check that `directory` is still the one that got `token` at creation, and remove the token.

    CommitRefusedError when it was removed (and perhaps recreated by a writer) while the stage ran: what it
    holds now is not everything the stage wrote.
    """
    try:
        found = (directory / TOKEN).read_text()
    except OSError:
        found = None
    if found != token:
        raise CommitRefusedError(f"{directory}: the temporary output directory was removed or replaced while the "
                                 "stage ran (its token is gone); nothing is committed")
    if remove:
        (directory / TOKEN).unlink()


def check_declared_rows(manifest: Mapping[str, Any], declared: Any, where: str) -> None:
    """Refuse an output whose Parquet rows differ from the rows its stage declared (parts lost or doubled)."""
    if isinstance(declared, bool) or not isinstance(declared, int):
        raise CommitRefusedError(f"{where}: the stage declares its rows but returned no integer 'rows' metric ({declared!r})")
    if manifest["rows"] != declared:
        raise CommitRefusedError(f"{where}: the output holds {manifest['rows']:,} rows but the stage wrote "
                                 f"{declared:,}; nothing is committed")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, extra: dict[str, Any] | None = None,
               check: Callable[[dict[str, Any]], None] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success commit it to `final` with a manifest.

    The directory carries a random token written at its creation: if it is gone at commit, the directory
    was removed (and maybe recreated) under the writer, and nothing is committed. `check(manifest)` may
    refuse the manifest (raise) before anything is committed. If another writer committed `final` first,
    ours is discarded (both hold the same content by construction of the cache key). On any exception the
    temporary directory is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TEMP_PREFIX}{final.name}@{socket.gethostname()}@{os.getpid()}@{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    token = new_token(tmp)
    try:
        yield tmp
        claim_token(tmp, token, remove=False)
        manifest = build_manifest(tmp, extra)
        if check is not None:
            check(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        claim_token(tmp, token)
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def owned_prefix(prefix: str) -> str:
    """`prefix` plus this host and process, so `remove_orphaned_temporaries` can tell when the owner is gone."""
    return f"{prefix}@{socket.gethostname()}@{os.getpid()}@"


def remove_orphaned_temporaries(directory: str | os.PathLike, prefix: str = TEMP_PREFIX) -> list[Path]:
    """Remove the temporary directories (named `<prefix><name>@<host>@<pid>@<random>`) of writers on this
    host that no longer run: `atomic_dir` temporaries, and shard actors' work directories.

    A writer killed mid-stage (SIGKILL, OOM) cannot clean up after itself. Temporaries of live
    processes and of other hosts (a shared runs directory) are left alone.
    """
    root, host, removed = Path(directory), socket.gethostname(), []
    for path in root.glob(f"{prefix}*") if root.is_dir() else []:
        owner = path.name[len(prefix):].rsplit("@", 3)
        if len(owner) == 4 and owner[1] == host and owner[2].isdigit() and not pid_alive(int(owner[2])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def commit_dir(tmp: Path, final: Path) -> None:
    """Atomically move a finished temporary directory into place (losing a race is not an error)."""
    if final.exists() and not is_committed(final):
        shutil.rmtree(final, ignore_errors=True)  # a stale, uncommitted leftover: never read
    try:
        os.rename(tmp, final)
    except OSError:
        if not is_committed(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """Write JSON so a reader sees the old file or the new one, never half of either.

    A failed write (a full disk, a quota) removes its temporary, so no zero-byte file is left behind.
    """
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary beside `path` that replaces it on success (`os.replace`), removed on any failure.

    The one temp-file + rename of the project: a reader sees the old file or the whole new one, and a
    writer killed or failing mid-write leaves no partial file where a reader looks.
    """
    path = Path(path)
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


SEAL = "sha256"  # the key of a sealed JSON file's own digest


def _seal_digest(payload: Mapping[str, Any]) -> str:
    body = {k: v for k, v in payload.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def write_json_sealed(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Write a JSON object atomically together with the sha256 of its own content (checkpoint manifests).

    The seal catches damage and stray edits; it is unkeyed, so it is not authentication (anyone who can
    write the file can reseal it).

    `path` may be an object-store URI (one PUT: a reader sees the old object or the new one).
    """
    from core import store

    sealed = {**payload, SEAL: _seal_digest(payload)}
    if store.is_remote(path):
        store.write_json(os.fspath(path), sealed)
    else:
        write_json_atomic(path, sealed)


def read_json_sealed(path: str | os.PathLike, what: str, hint: str = "") -> dict[str, Any]:
    """A JSON object written by `write_json_sealed`; CorruptArtifactError if it was edited or damaged.

    A checkpoint's metadata decides where a resumed computation goes on; an edited `node` would otherwise
    be resumed from silently. `hint` tells the user how to recover (appended to the message).
    """
    from core import store

    missing = CorruptArtifactError(f"{path}: {what} is missing")
    try:
        found = store.read_json(os.fspath(path)) if store.is_remote(path) else read_json(path, missing, what)
    except CorruptArtifactError as exc:
        raise CorruptArtifactError(f"{exc}{hint}") from None
    if found is None:
        raise CorruptArtifactError(f"{missing}{hint}")
    if not isinstance(found, dict) or found.get(SEAL) != _seal_digest(found):
        raise CorruptArtifactError(f"{path}: {what} does not match its checksum (edited or damaged){hint}")
    return {k: v for k, v in found.items() if k != SEAL}
