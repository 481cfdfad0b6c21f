"""A sharded index on an object store: each shard uploads its own files, opening downloads into the node cache.

hnswlib reads and writes local files only. Saving: every primary shard actor uploads its native file (and
its deleted-ids table and manifest) from its node-local working directory straight into the attempt prefix
and returns their sizes and sha256; the driver then writes `index.json` and the `_SUCCESS` manifest, last.
Opening: the driver resolves the newest committed attempt once and fetches only its small JSON files; every
shard actor is handed that exact attempt, downloads its own files into its node's checksum-keyed cache
(verified while streaming) and loads them, so a save committing meanwhile never mixes versions and searches
never touch the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shardwalk.core.errors import InvariantError
from shardwalk.core.index import hnsw
from shardwalk.core.storage import node_cache, sink, store
from shardwalk.core.storage.files import MANIFEST


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


def open_attempt(uri: str) -> tuple[str, Path]:
    """The committed attempt every reader of this open uses (resolved once, on the driver) and a verified
    local copy of its JSON files (what the driver reads before spawning shards)."""
    c = store.require_committed(uri)
    names = [rel for rel in c.manifest["files"] if rel.endswith(".json")]
    return c.uri, node_cache.fetch(c, names)[0]


def fetch_shard(attempt: str, shard: int) -> Path:
    """A verified node-local copy of one shard's files from the pinned `attempt` (inside the shard actor)."""
    c = store.require_committed(attempt)
    if c.uri != attempt.rstrip("/"):
        raise InvariantError(f"{attempt}: a shard is loaded from the attempt its driver opened, not the newest one")
    names = [rel for rel in shard_names(shard) if rel in c.manifest["files"]]
    return node_cache.fetch(c, names)[0]


def store_uri_of(path: str | os.PathLike) -> str | None:
    """The store URI behind a path: itself if remote, the attempt this process downloaded it from if it is a
    node-local copy it holds (the stage's input), else None (a local index)."""
    location = sink.readable(path)
    return location if store.is_remote(location) else None
