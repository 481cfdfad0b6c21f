"""Reading the user's sources: a Parquet file or directory, a URI, a `pyarrow.Table`, a numpy array, `builtin:NAME`.

URIs are whatever `pyarrow.fs` resolves (`file://`, `s3://`, `gs://`); `builtin:NAME` is core/data/builtin.py.
Sharding plans row ranges from Parquet footers only, so the driver never materialises the data: each
worker reads its own `ShardSpec`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ParamSpec, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shardwalk.core.data import builtin as datasets
from shardwalk.core.data.schema import from_numpy
from shardwalk.core.errors import DataError
from shardwalk.core.storage.sink import check_local

P = ParamSpec("P")
R = TypeVar("R")
Source = str | os.PathLike | pa.Table | np.ndarray


def one_line_text(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# ----------------------------------------------------------------------------- reading


def _resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    text = os.fspath(path)
    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise DataError(f"{text}: cannot open ({exc})") from None
    check_local(text)  # never another node's scratch or cache (core/storage/sink.py)
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


def plan_row_groups(source: Source, rows: int = 65_536) -> list[ShardSpec]:
    """One spec per Parquet row group (footers only), so each range a reader asks for decodes one row group
    once; in-memory sources: ranges of `rows`."""
    if isinstance(source, pa.Table | np.ndarray) or datasets.is_builtin(source):
        total = sum(s.num_rows for s in plan_shards(source, 1))
        return plan_shards(source, max(1, -(-total // rows)))
    fs, files = _parquet_files(source)
    groups: list[list[int]] = []
    for path in files:
        try:
            with fs.open_input_file(path) as handle:
                meta = pq.ParquetFile(handle).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        groups.append([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    counts = tuple(sum(g) for g in groups)
    if sum(counts) == 0:
        raise DataError(f"{os.fspath(source)}: dataset is empty (0 rows)")
    bounds = np.cumsum([0] + [size for g in groups for size in g if size])
    uri = os.fspath(source)
    return [ShardSpec(i, int(a), int(b), uri=uri, files=tuple(files), file_rows=counts)
            for i, (a, b) in enumerate(itertools.pairwise(bounds))]


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

