"""Where a stage's actors and tasks put their files, and where they read its inputs, on any node.

On an object-store runs dir the stage task writes into its node's scratch and uploads that directory; files
its actors and tasks produce on other nodes must not go there (the task would never see them). So
`destination(out)` names the stage's attempt prefix instead, helpers `put_parquet` / `put_file` there from
their own node (node-local scratch, then one upload, hashed on the way) and return manifest entries, and the
stage task `record`s them: its manifest, written last, lists every object. With a local runs dir the same
calls write into `out` (temporary name, then rename) and `record` does nothing.

Inputs reach the stage task as node-local copies; `readable(path)` maps such a copy to the store object it
came from (the attempt this process downloaded it from, held in memory while the stage runs), so a helper on
another node reads the store, not a disk it cannot see. `check_local` refuses a
path inside another node's scratch or cache (roots marked by `.shardwalk-node`): on a simulated cluster, where
every "node" shares one disk, that turns a silent cross-node read into the error a real cluster would give.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shardwalk.core.errors import ShardwalkError
from shardwalk.core.storage import node_cache, store
from shardwalk.core.storage.files import write_parquet

NODE_MARKER = node_cache.NODE_MARKER
PART = "part-{:05d}.parquet"  # the i-th part of a sharded output


class NodeLocalPathError(ShardwalkError):
    """A helper was handed a path on another node's local disk (a bug: exit 1)."""


@dataclass
class Attempt:
    """The object-store attempt the stage running in this process writes: its local scratch and prefix."""

    scratch: Path
    uri: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # rel -> entry, put by helpers
    schemas: set[str] = field(default_factory=set)


_ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("stage_attempt", default=None)


def scratch_root() -> Path | None:
    """Node-local scratch for output in progress (SHARDWALK_SCRATCH, else None: the system temp dir)."""
    root = os.environ.get("SHARDWALK_SCRATCH")
    return node_cache.mark_node_root(Path(root)) if root else None


def own_roots() -> set[Path]:
    """This node's marked roots: its scratch and its download cache."""
    roots = {Path(os.environ[v]).resolve() for v in ("SHARDWALK_SCRATCH", "SHARDWALK_LOCAL_CACHE") if os.environ.get(v)}
    for root in roots:
        node_cache.mark_node_root(root)
    return roots


def check_local(path: str | os.PathLike) -> None:
    """Refuse a local path inside another node's marked scratch or cache root."""
    if store.is_uri(os.fspath(path)):
        return
    mine = own_roots()
    for parent in Path(path).absolute().parents:
        if (parent / NODE_MARKER).is_file():
            if parent.resolve() not in mine:
                raise NodeLocalPathError(f"{path}: lies on another node's local disk ({parent}); pass its store URI")
            return


@contextlib.contextmanager
def stage_attempt(scratch: Path, uri: str) -> Iterator[Attempt]:
    """While a stage runs here: helpers' files for `scratch` go to `uri`, and their entries are collected."""
    attempt = Attempt(scratch.absolute(), uri)
    token = _ATTEMPT.set(attempt)
    try:
        yield attempt
    finally:
        _ATTEMPT.reset(token)  # Ray reuses worker processes: never leak into the next task


def destination(out: str | os.PathLike) -> str:
    """Where helpers on any node write what belongs at `out` (inside the running stage's output)."""
    attempt, path = _ATTEMPT.get(), Path(out).absolute()
    if attempt is None or store.is_uri(os.fspath(out)) or not path.is_relative_to(attempt.scratch):
        return os.fspath(out)
    rel = path.relative_to(attempt.scratch).as_posix()
    return attempt.uri if rel == "." else store.join(attempt.uri, rel)


def parts_destination(out_dir: str | os.PathLike) -> str:
    """`destination(out_dir)`, created when it is a local directory: where actors on any node put their parts."""
    dest = destination(out_dir)
    if not store.is_uri(dest):
        Path(dest).mkdir(parents=True, exist_ok=True)
    return dest


def record(groups: Iterable[Mapping[str, Mapping[str, Any]]]) -> None:
    """List files helpers put under the running stage's attempt (keyed by location) in its manifest."""
    attempt = _ATTEMPT.get()
    for group in groups:
        for location, entry in group.items():
            if attempt is None or not store.is_remote(location):
                continue  # local files are hashed by the stage's own commit
            root, query = attempt.uri.partition("?")[::2]  # a query string (endpoint) ends both URIs
            path, _, own_query = location.partition("?")
            if not path.startswith(root + "/") or own_query != query:
                raise NodeLocalPathError(f"{location}: not inside the running stage's attempt {attempt.uri}")
            entry = dict(entry)
            if "schema" in entry:
                attempt.schemas.add(entry.pop("schema"))
            attempt.files[path[len(root) + 1:]] = entry


def readable(path: str | os.PathLike) -> str:
    """A location any node can read: the committed attempt behind a node-local copy this process holds (the
    stage's own inputs, as it downloaded them), else the path itself. Never looked up in a file on disk."""
    text = os.fspath(path)
    if store.is_uri(text):
        return text
    held = node_cache.source_of(text)
    if held is None:
        return text
    entry, attempt = held
    rel = Path(text).absolute().relative_to(entry).as_posix()
    return attempt if rel == "." else store.join(attempt, rel)


def put_parquet(table: pa.Table, dest_dir: str, name: str) -> dict[str, dict[str, Any]]:
    """Write one Parquet part to `dest_dir/name` (a local dir or a store prefix); its manifest entry by location."""
    if not store.is_remote(dest_dir):
        final = Path(dest_dir) / name
        check_local(final)
        tmp = final.with_name(f".{final.name}.tmp")  # fixed: a retry overwrites a killed writer's temporary
        write_parquet(table, tmp)
        os.replace(tmp, final)  # a writer killed mid-write leaves only a hidden temporary
        return {str(final): {"bytes": final.stat().st_size, "rows": table.num_rows}}
    with tempfile.TemporaryDirectory(prefix="shardwalk-put-", dir=scratch_root()) as tmp:
        local = write_parquet(table, Path(tmp) / Path(name).name)
        meta = pq.read_metadata(local)  # rows and schema as shardwalk.core.storage.files.build_manifest records them
        entries = put_file(local, dest_dir, name)
    next(iter(entries.values())).update(rows=meta.num_rows, schema=str(meta.schema.to_arrow_schema()))
    return entries


def put_file(local: Path, dest_dir: str, name: str) -> dict[str, dict[str, Any]]:
    """Upload one local file to `dest_dir/name` in one stream, hashing it on the way; its entry by location."""
    uri = store.join(dest_dir, name)
    fs, path = store.resolve(uri)
    digest, size = hashlib.sha256(), 0
    with store.store_errors(uri), open(local, "rb") as src, fs.open_output_stream(path) as out:
        while block := src.read(store.CHUNK):
            digest.update(block)
            out.write(block)
            size += len(block)
    entry = {"bytes": size, "sha256": digest.hexdigest()}
    store.stamp(entry, uri)  # the store's ETag: a cache hit compares it instead of reading the object back
    return {uri: entry}
