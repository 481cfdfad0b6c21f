"""The I/O half of cache keys: digests of the code a stage runs and of the files its parameters name.

Kept apart from core/dag/cache_key.py (pure) so the key function never touches a disk or a store. Cheap by
design: the project's own sources are hashed once per process; an input file costs a stat (a HEAD on a
store) unless it is small enough to hash (< SMALL_FILE_BYTES), which also ignores a mere `touch`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import marshal
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from shardwalk.core.data import builtin as datasets
from shardwalk.core.errors import DataError
from shardwalk.core.storage import store

PROJECT_PACKAGES = ("core", "workers", "pipelines")
SMALL_FILE_BYTES = 1 << 20


def project_version() -> str:
    """The installed shardwalk version ("unknown" when run from a checkout that was never installed)."""
    try:
        return importlib.metadata.version("shardwalk")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=1)
def project_digest() -> str:
    """sha256 of the project's version and of every Python source of core/, workers/ and pipelines/ (once per process)."""
    root = Path(__file__).parent.parent.parent  # the `shardwalk` package (links kept: core/, not the link target)
    digest = hashlib.sha256(project_version().encode())
    for package in PROJECT_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def is_project_code(fn: Callable[..., Any]) -> bool:
    parts = (getattr(fn, "__module__", None) or "").split(".")
    return len(parts) > 1 and parts[0] == "shardwalk" and parts[1] in PROJECT_PACKAGES


def _source_of(fn: Callable[..., Any]) -> bytes:
    """The source of the module defining `fn` (its helpers change its output too), else of `fn`, else its bytecode."""
    fn = inspect.unwrap(fn)
    for target in (inspect.getmodule(fn), fn):
        try:
            if target is not None:
                return inspect.getsource(target).encode()
        except (OSError, TypeError):
            continue
    code = getattr(fn, "__code__", None)
    return marshal.dumps(code) if code is not None else f"{fn.__module__}.{fn.__qualname__}".encode()


def code_digest(fn: Callable[..., Any]) -> str:
    """What a stage's code is: the project's sources (its version included), plus the stage's module for your own stages."""
    if is_project_code(fn):
        return project_digest()
    return hashlib.sha256(project_digest().encode() + b"\0" + _source_of(fn)).hexdigest()


def input_digest(location: str) -> str:
    """What a path, directory or URI holds, cheaply: per file its path and size, with its sha256 when small,
    else its mtime (local) or ETag (store). A built-in dataset is part of the project's code."""
    if datasets.is_builtin(location):
        return location
    entries = _remote_entries(location) if store.is_remote(location) else _local_entries(location)
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _local_entries(location: str) -> list[str]:
    root = store.local_path(location)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        raise DataError(f"{location}: no such file or directory")
    entries = []
    for path in files:
        stat = path.stat()
        content = _sha256(path) if stat.st_size < SMALL_FILE_BYTES else f"mtime {stat.st_mtime_ns}"
        entries.append(f"{path}\t{stat.st_size}\t{content}")
    return entries


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _remote_entries(location: str) -> list[str]:
    fs, root = store.resolve(location)
    with store.store_errors(location):
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{location}: no such object or prefix")
        found = [info] if info.type == pafs.FileType.File else sorted(
            (f for f in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if f.type == pafs.FileType.File),
            key=lambda f: f.path)
    entries = []
    for f in found:
        uri = location if f.path == root else store.join(location, os.path.relpath(f.path, root))
        tag = store.etag(uri)
        entries.append(f"{f.path}\t{f.size}\t" + (f"etag {tag[1]}" if tag else f"mtime {f.mtime_ns}"))
    return entries
