"""This node's verified copies of committed store outputs: download once, check sha256, reuse, evict LRU.

hnswlib and Parquet readers need local files; a stage task or actor materialises a committed attempt here
(keyed by its manifest digest) instead of reading the store on its hot path (docs/design.md "Storage").
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from core.io import MANIFEST, atomic_file
from core.store import ORIGIN, require_committed, safe_rel, stream_object

NODE_MARKER = ".shardwalk-node"  # in a node-local root (scratch, download cache) set explicitly per node
DEFAULT_CACHE_BYTES = 20 << 30



def mark_node_root(root: Path) -> Path:
    """Create `root` and mark it as this node's (for roots set explicitly per node; see core/sink.py)."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / NODE_MARKER
    if not marker.is_file():
        marker.write_text(str(root.resolve()))
    return root


def cache_root() -> Path:
    """This node's download cache (SHARDWALK_LOCAL_CACHE, marked as this node's; else a per-user temp directory)."""
    root = os.environ.get("SHARDWALK_LOCAL_CACHE")
    return mark_node_root(Path(root)) if root else Path(tempfile.gettempdir(), f"shardwalk-cache-{os.getuid()}")


def materialize(uri: str, names: Iterable[str] | None = None) -> tuple[Path, int]:
    """A verified local copy of a committed remote output (or of the named files); returns it and bytes fetched.

    Files already in the cache (same manifest digest) are reused; each download is hashed while it streams
    and only renamed into place when it matches, so the cache never holds an unverified file.
    """
    c = require_committed(uri)
    target = cache_root() / c.digest[:32]
    target.mkdir(parents=True, exist_ok=True)
    os.utime(target)  # most recently used: last to be evicted
    fetched = 0
    for rel in list(names) if names is not None else list(c.manifest["files"]):
        dest = target / safe_rel(c.uri, rel)
        if dest.is_file() and dest.stat().st_size == c.manifest["files"].get(rel, {}).get("bytes"):
            continue
        with atomic_file(dest) as tmp, open(tmp, "wb") as sink:
            fetched += stream_object(c, rel, sink)
    _write_atomic(target / MANIFEST, json.dumps(c.manifest, indent=1, sort_keys=True))
    _write_atomic(target / ORIGIN, c.uri)
    evict(keep=target)
    return target, fetched


def _write_atomic(path: Path, text: str) -> None:
    """Several shard actors of one node may materialise into the same entry at once."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def origin(path: str | os.PathLike) -> str | None:
    """The committed attempt a node-local copy came from (so actors on other nodes read the store, not it)."""
    marker = Path(path) / ORIGIN
    return marker.read_text().strip() if marker.is_file() else None


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def evict(keep: Path | None = None) -> list[Path]:
    """Remove least recently used cache entries until the cache fits its byte budget."""
    root = cache_root()
    budget = int(os.environ.get("SHARDWALK_LOCAL_CACHE_BYTES", DEFAULT_CACHE_BYTES))
    entries = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    sizes = {p: _tree_bytes(p) for p in entries}
    total, removed = sum(sizes.values()), []
    for p in entries:
        if total <= budget:
            break
        if keep is not None and p.resolve() == keep.resolve():
            continue
        shutil.rmtree(p, ignore_errors=True)
        total -= sizes[p]
        removed.append(p)
    return removed
