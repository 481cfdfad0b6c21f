"""Committed outputs on a local disk: a directory appears whole or not at all, with a manifest of checksums.

`atomic_dir(final)` yields a temporary directory beside `final`; on success it writes the `_SUCCESS`
manifest (row count, schema, sha256 of every file) and renames it into place in one step. Single files are
replaced with `atomic_file` / `write_json_atomic`. Object stores have their own commit (core/storage/store.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shardwalk.core.errors import CommitRefusedError, CorruptArtifactError
from shardwalk.core.storage.names import artifact_name

MANIFEST = "_SUCCESS"
TEMP_PREFIX = ".tmp-"  # atomic_dir temporaries: .tmp-<final>@<host>@<pid>@<random>


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

