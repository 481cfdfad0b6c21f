"""This node's verified copies of committed store outputs: download once, verify on every use, evict LRU.

hnswlib and Parquet readers need local files; a stage task or actor materialises a committed attempt here
(keyed by its manifest digest) instead of reading the store on its hot path (docs/design.md "Storage").

The root is private (created 0700, owned by this user, never a symlink) and holds only what this module
puts there: entries named by a digest, `.pins/` (one file per process using an entry: eviction keeps
those) and `.verified/` (the (size, mtime, ctime, inode) of each file last hashed against its manifest,
so a file is re-hashed only when it changed). The byte budget is a soft limit: entries in use are never
evicted, a warning says the budget is exceeded instead. Nothing here follows a symlink.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from shardwalk.core.errors import ConfigError
from shardwalk.core.storage.files import MANIFEST, atomic_file, pid_alive, sha256_file
from shardwalk.core.storage.store import Committed, require_committed, safe_rel, stream_object

NODE_MARKER = ".shardwalk-node"  # in a node-local root (scratch, download cache) set explicitly per node
DEFAULT_CACHE_BYTES = 20 << 30
ENTRY = re.compile(r"[0-9a-f]{32}")  # an entry's name: the first 32 hex digits of its manifest digest
PINS, VERIFIED, LOCK, EVICTED = ".pins", ".verified", ".lock", ".evicted-"

log = logging.getLogger("shardwalk")


class NodeCacheError(ConfigError):
    """The node cache's root or an entry is not this user's private directory (a symlink, another owner)."""


def mark_node_root(root: Path) -> Path:
    """Create `root` and mark it as this node's (for roots set explicitly per node; see core/storage/sink.py)."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / NODE_MARKER
    if not marker.is_file():
        marker.write_text(str(root.resolve()))
    return root


def cache_root() -> Path:
    """This node's download cache (SHARDWALK_LOCAL_CACHE, marked as this node's; else a per-user temp directory)."""
    configured = os.environ.get("SHARDWALK_LOCAL_CACHE")
    root = Path(configured) if configured else Path(tempfile.gettempdir(), f"shardwalk-cache-{os.getuid()}")
    root = private_root(root)
    return mark_node_root(root) if configured else root


def private_root(root: Path) -> Path:
    """Create `root` with mode 0700, or refuse it unless it is a real directory this user owns, writable by no one else."""
    root = root.absolute()
    root.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(root, 0o700)
    info = os.lstat(root)
    if stat.S_ISLNK(info.st_mode):
        raise NodeCacheError(f"{root}: the node cache root is a symlink; refusing it (set SHARDWALK_LOCAL_CACHE to a real directory)")
    if not stat.S_ISDIR(info.st_mode):
        raise NodeCacheError(f"{root}: the node cache root is not a directory")
    if info.st_uid != os.getuid():
        raise NodeCacheError(f"{root}: the node cache root belongs to uid {info.st_uid}, not to this user ({os.getuid()})")
    if info.st_mode & 0o022:
        raise NodeCacheError(f"{root}: the node cache root is writable by group or others (mode {info.st_mode & 0o777:o}); "
                             "use a private directory (chmod 700)")
    return root


# ----------------------------------------------------------------------------- pins: entries in use


_HELD: dict[Path, int] = {}  # entry -> references this process holds
_SOURCES: dict[Path, str] = {}  # entry path -> the committed attempt this process downloaded it from
_THREAD_LOCK = threading.Lock()
_SCOPE: contextvars.ContextVar[list[tuple[Path, str]] | None] = contextvars.ContextVar("node_cache_scope", default=None)


def _pin_file(root: Path, name: str) -> Path:
    return root / PINS / f"{name}@{socket.gethostname()}@{os.getpid()}"


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise pinning and eviction among this node's processes (an entry is never removed once pinned)."""
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pin(root: Path, name: str, source: str) -> Path:
    """Create (or reuse) entry `name` and mark it in use by this process; return its path."""
    entry = root / name
    with _THREAD_LOCK, _locked(root):
        with contextlib.suppress(FileExistsError):
            os.mkdir(entry, 0o700)
        if not stat.S_ISDIR(os.lstat(entry).st_mode):
            raise NodeCacheError(f"{entry}: a node cache entry is a symlink or a file; refusing it (remove it)")
        if _HELD.get(entry, 0) == 0:
            (root / PINS).mkdir(mode=0o700, exist_ok=True)
            _pin_file(root, name).touch()
        _HELD[entry] = _HELD.get(entry, 0) + 1
        _SOURCES[entry] = source
    scope = _SCOPE.get()
    if scope is not None:
        scope.append((root, name))
    return entry


def _unpin(root: Path, name: str) -> None:
    entry = root / name
    with _THREAD_LOCK:
        _HELD[entry] = _HELD.get(entry, 1) - 1
        if _HELD[entry] <= 0:
            del _HELD[entry]
            _SOURCES.pop(entry, None)
            _pin_file(root, name).unlink(missing_ok=True)


@contextlib.contextmanager
def holding() -> Iterator[None]:
    """Entries materialised inside stay pinned until the block ends (a stage, an actor's load); outside any
    such block a pin lasts as long as the process."""
    scope: list[tuple[Path, str]] = []
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(token)
        for root, name in scope:
            _unpin(root, name)


def source_of(path: str | os.PathLike) -> tuple[Path, str] | None:
    """(entry, attempt URI) when `path` lies in an entry this process holds: what it downloaded, from where."""
    here = Path(path).absolute()
    with _THREAD_LOCK:
        for entry, uri in _SOURCES.items():
            if here == entry or here.is_relative_to(entry):
                return entry, uri
    return None


def _pinned(root: Path) -> set[str]:
    """Entries some live process on this node (or any process of another host) holds; stale pins are removed."""
    held, host = set(), socket.gethostname()
    for pin in (root / PINS).iterdir() if (root / PINS).is_dir() else []:
        name, _, owner = pin.name.partition("@")
        pin_host, _, pid = owner.rpartition("@")
        if pin_host == host and pid.isdigit() and not pid_alive(int(pid)):
            pin.unlink(missing_ok=True)
            continue
        held.add(name)
    return held


# ----------------------------------------------------------------------------- materialise and verify


def materialize(uri: str, names: Iterable[str] | None = None) -> tuple[Path, int]:
    """A verified local copy of a committed remote output (or of the named files); returns it and bytes fetched."""
    return fetch(require_committed(uri), names)


def fetch(c: Committed, names: Iterable[str] | None = None) -> tuple[Path, int]:
    """A verified local copy of committed attempt `c` (or of the named files), pinned; returns it and bytes fetched.

    A file already there is served only if it is the one last verified against the manifest's sha256
    (same size, mtime, ctime and inode) or hashes to it now; anything else (missing, partial, edited) is
    downloaded again, hashed while it streams and renamed into place only when it matches.
    """
    root = cache_root()
    target = _pin(root, c.digest[:32], c.uri)
    os.utime(target, follow_symlinks=False)  # most recently used: last to be evicted
    stamps = _read_stamps(root, target.name)
    fetched = 0
    for rel in list(names) if names is not None else list(c.manifest["files"]):
        dest = _entry_file(target, safe_rel(c.uri, rel))
        entry = c.manifest["files"].get(rel)
        if isinstance(entry, dict) and _verified(dest, entry, stamps.get(rel)):
            stamps[rel] = _stamp(dest)
            continue
        with atomic_file(dest) as tmp, open(tmp, "wb") as sink:
            fetched += stream_object(c, rel, sink)
        stamps[rel] = _stamp(dest)
    _write_atomic(target / MANIFEST, json.dumps(c.manifest, indent=1, sort_keys=True))
    _write_atomic(root / VERIFIED / target.name, json.dumps(stamps))
    evict()
    return target, fetched


def _entry_file(entry: Path, rel: str) -> Path:
    """`entry/rel`, refused when a directory on the way is a symlink (nothing is written or read through one)."""
    path = entry
    for part in rel.split("/")[:-1]:
        path = path / part
        if path.is_symlink():
            raise NodeCacheError(f"{path}: a symlink inside a node cache entry; refusing it (remove the entry)")
    return entry / rel


def _stamp(path: Path) -> list[int]:
    info = os.lstat(path)
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _verified(path: Path, entry: dict, stamp: list[int] | None) -> bool:
    """Whether `path` is a regular file holding the manifest entry's bytes (re-hashed unless its stamp is known)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size != entry.get("bytes"):
        return False
    return stamp == _stamp(path) or sha256_file(path) == entry.get("sha256")


def _read_stamps(root: Path, name: str) -> dict[str, list[int]]:
    try:
        stamps = json.loads((root / VERIFIED / name).read_text())
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _write_atomic(path: Path, text: str) -> None:
    """Several shard actors of one node may materialise into the same entry at once."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(text)


# ----------------------------------------------------------------------------- eviction


def _tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path`, links neither followed nor counted."""
    total = 0
    for folder, _, files in os.walk(path, followlinks=False):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(os.path.join(folder, name))
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def budget_bytes() -> int:
    return int(os.environ.get("SHARDWALK_LOCAL_CACHE_BYTES", DEFAULT_CACHE_BYTES))


def evict() -> list[Path]:
    """Remove least recently used entries no process holds until the cache fits its byte budget.

    Only real directories named like entries are candidates (a symlink is never followed or removed);
    when the entries in use alone exceed the budget, they stay and a warning says so.
    """
    root, budget, removed = cache_root(), budget_bytes(), []
    with _THREAD_LOCK, _locked(root):
        entries = []
        for item in os.scandir(root):
            if not item.is_dir(follow_symlinks=False):
                continue
            if ENTRY.fullmatch(item.name):
                entries.append((item.stat(follow_symlinks=False).st_mtime_ns, Path(item.path)))
            elif item.name.startswith(EVICTED):  # an evictor killed mid-removal
                shutil.rmtree(item.path, ignore_errors=True)
        sizes = {path: _tree_bytes(path) for _, path in entries}
        total, pinned = sum(sizes.values()), _pinned(root)
        for _, path in sorted(entries):
            if total <= budget:
                break
            if path.name in pinned:
                continue
            trash = root / f"{EVICTED}{path.name}-{uuid.uuid4().hex[:8]}"
            os.rename(path, trash)  # out of sight first: a half-removed entry is never found
            shutil.rmtree(trash, ignore_errors=True)
            (root / VERIFIED / path.name).unlink(missing_ok=True)
            total -= sizes[path]
            removed.append(path)
    if total > budget:
        log.warning("node cache %s holds %d bytes, over its budget of %d (SHARDWALK_LOCAL_CACHE_BYTES): "
                    "the entries in use are kept", root, total, budget)
    return removed
