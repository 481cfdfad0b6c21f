"""A sharded index on an object store: each shard uploads its own files, opening downloads into the node cache.

hnswlib reads and writes local files only. Saving: every primary shard actor uploads its native file (and
its deleted-ids table and manifest) from its node-local working directory straight into the attempt prefix
and returns their sizes and sha256; the driver then writes `index.json` and the `_SUCCESS` manifest, last.
Opening: the driver fetches only the small JSON files; every shard actor downloads its own files into its
node's checksum-keyed cache (verified while streaming) and loads them, so searches never touch the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core import hnsw, node_cache, sink, store
from core.io import MANIFEST


def shard_names(shard: int) -> list[str]:
    """Every file a saved shard may have."""
    return [hnsw.shard_file(shard), hnsw.deleted_file(shard), hnsw.shard_manifest_file(shard)]


def upload_shard(workdir: Path, shard: int, attempt: str) -> dict[str, dict[str, Any]]:
    """Upload one shard's committed working files (its manifest vouches for them); return manifest entries."""
    manifest, _ = hnsw.load_shard_manifest(workdir, shard)
    entries = {}
    for rel in [*manifest["files"], hnsw.shard_manifest_file(shard)]:  # hashed while it streams: one read
        [entries[rel]] = sink.put_file(workdir / rel, attempt, rel).values()
    return entries


def commit_index(attempt: str, meta: Mapping[str, Any], shard_entries: list[dict[str, dict[str, Any]]]) -> store.Committed:
    """Write index.json, then the manifest naming every object: the index exists from this PUT on."""
    body = json.dumps(dict(meta), indent=1, sort_keys=True, default=str).encode()
    store.write_bytes(store.join(attempt, hnsw.INDEX_FILE), body)
    files = {hnsw.INDEX_FILE: {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}}
    for entries in shard_entries:
        files.update(entries)
    manifest = {"rows": 0, "schemas": [], "files": files, "kind": "index", "attempt": attempt, "committed_at": time.time()}
    store.write_json(store.join(attempt, MANIFEST), manifest)
    return store.Committed(attempt, manifest)


def new_attempt(uri: str) -> str:
    return store.join(uri, store.ATTEMPTS, store.new_attempt_id())


def fetch_index_json(uri: str) -> Path:
    """A verified local copy of the index's JSON files (what the driver reads before spawning shards)."""
    c = store.require_committed(uri)
    names = [rel for rel in c.manifest["files"] if rel.endswith(".json")]
    return node_cache.materialize(c.uri, names)[0]


def fetch_shard(uri: str, shard: int) -> Path:
    """A verified node-local copy of one shard's files (run inside the shard actor, on its node)."""
    c = store.require_committed(uri)
    names = [rel for rel in shard_names(shard) if rel in c.manifest["files"]]
    return node_cache.materialize(c.uri, names)[0]


def store_uri_of(path: str | os.PathLike) -> str | None:
    """The store URI behind a path: itself if remote, its origin if it is a node-local copy, else None."""
    text = os.fspath(path)
    if store.is_remote(text):
        return text
    return node_cache.origin(text) if Path(text).is_dir() else None
