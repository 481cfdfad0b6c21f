"""Artifacts on any `pyarrow.fs` URI (local path, file://, s3://, gs://) with a commit protocol that needs no rename.

Object stores have no atomic directory rename, so a remote output directory `D` is written as attempts:
each writer uploads its files under `D/attempts/<attempt id>/` and the `_SUCCESS` manifest (rows, schema,
sha256 and size of every object) last. An attempt without a manifest is uncommitted and nothing reads it;
readers take the newest committed attempt whose objects match their manifest. Two writers racing on one
`D` both commit; their contents are equal by construction of the stage key, so either answer is right.
Local directories keep the rename-based commit of core/storage/files.py (`D/_SUCCESS` directly).

Remote inputs become local files through a node-local cache keyed by the manifest's sha256 (verified while
downloading, reused across opens, bounded by SHARDWALK_LOCAL_CACHE_BYTES, oldest evicted first).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from shardwalk.core.errors import CommitRefusedError, ConfigError, CorruptArtifactError, DataError
from shardwalk.core.storage import files
from shardwalk.core.storage.files import MANIFEST, TOKEN, build_manifest
from shardwalk.core.storage.names import artifact_name, is_artifact_name

SCHEMES = ("file", "s3", "gs", "gcs")
ATTEMPTS = "attempts"
CHUNK = 8 << 20


_BYTES_READ = [0]  # bytes this process read from stores (benchmarks report it for a cache-hit rerun)


def bytes_read() -> int:
    """Bytes this process has read from object stores so far (object bodies and small JSON alike)."""
    return _BYTES_READ[0]


class StoreUnavailableError(OSError):
    """The object store could not be reached or refused a request (an internal failure: exit 1)."""


def is_uri(text: str | os.PathLike) -> bool:
    """True for `scheme://...` strings; plain paths (and Paths) are local."""
    return isinstance(text, str) and "://" in text


def is_remote(text: str | os.PathLike) -> bool:
    """True for URIs that do not name the local filesystem."""
    return is_uri(text) and not str(text).startswith("file://")


def local_path(text: str | os.PathLike) -> Path:
    """The local path of a plain path or a file:// URI."""
    text = os.fspath(text)
    return Path(text[len("file://"):] if text.startswith("file://") else text).absolute()


def join(uri: str, *parts: str) -> str:
    """`uri/part/...` without doubled slashes; a query string (`?endpoint_override=...`) stays at the end."""
    base, sep, query = uri.partition("?")
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)]) + sep + query


def _check_syntax(uri: str) -> str:
    scheme = uri.split("://", 1)[0].lower() if is_uri(uri) else ""
    if "://" in uri and scheme not in SCHEMES:
        raise ConfigError(f"{uri}: unknown storage scheme '{scheme}://' (use a local path, file://, s3:// or gs://)")
    body = uri.split("://", 1)[-1].split("?", 1)[0]
    if ".." in body.split("/"):
        raise ConfigError(f"{uri}: '..' segments are not allowed in a storage URI")
    if scheme in ("s3", "gs", "gcs") and not body.strip("/"):
        raise ConfigError(f"{uri}: no bucket named")
    return scheme


@functools.lru_cache(maxsize=64)
def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise ConfigError(f"{uri}: cannot resolve storage ({_first_line(exc)})") from None


def _unreachable(exc: OSError) -> bool:
    """Whether a store request failed because nothing answered (the SDK's own retries are spent by then)."""
    return "NETWORK_CONNECTION" in str(exc) or "curlCode" in str(exc)


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a remote URI (the S3 endpoint/credentials come from AWS_* variables)."""
    _check_syntax(uri)
    base, sep, query = uri.partition("?")
    return _filesystem(base.rstrip("/") + sep + query)


def locate(uri: str, rel: str, listed_in: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path, URI to show) of `rel`, a name read from an artifact, under the trusted `uri`.

    Only `uri` is parsed; `rel` must pass the name grammar (core/storage/names.py) and is appended as a path on the
    filesystem object, never re-parsed as a URI (a `?endpoint_override=` or `%2e%2e` in it cannot redirect).
    """
    fs, root = resolve(uri)
    rel = artifact_name(rel, listed_in)
    return fs, f"{root.rstrip('/')}/{rel}", join(uri, rel)


def check_runs_dir(runs_dir: str | os.PathLike, what: str = "runs dir") -> str:
    """Validate a runs directory before anything is written; return it normalised (a path or a URI).

    Unknown schemes, '..', a missing bucket, refused credentials or a file where a directory belongs are
    ConfigErrors naming the URI (the CLI exits 2).
    """
    text = os.fspath(runs_dir)
    _check_syntax(text)
    if not is_remote(text):
        path = local_path(text)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{text}: {what} is a file, not a directory")
        return str(path)
    fs, root = resolve(text)
    bucket = root.split("/", 1)[0]
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise ConfigError(f"{text}: bucket '{bucket}' does not exist")
        if fs.get_file_info(root).type == pafs.FileType.File:
            raise ConfigError(f"{text}: {what} is an object (a file), not a prefix")
    except OSError as exc:
        if _unreachable(exc):  # not the user's input
            raise StoreUnavailableError(f"{text}: object store unreachable ({_first_line(exc)})") from None
        raise ConfigError(f"{text}: cannot access the store ({_first_line(exc)})") from None
    return text.rstrip("/")


@contextlib.contextmanager
def store_errors(uri: str) -> Any:
    """Turn an I/O failure against the store into a one-line error naming the URI."""
    try:
        yield
    except (ConfigError, CorruptArtifactError, DataError):
        raise
    except OSError as exc:
        raise StoreUnavailableError(f"{uri}: object store request failed ({_first_line(exc)})") from None


# ----------------------------------------------------------------------------- small objects


def write_bytes(uri: str, data: bytes) -> None:
    """One PUT: an object store shows readers the old object or the new one, never half."""
    fs, path = resolve(uri)
    with store_errors(uri), fs.open_output_stream(path) as out:
        out.write(data)


def read_bytes(uri: str) -> bytes | None:
    """The object's bytes, or None if it does not exist."""
    return _read_at(*resolve(uri), uri)


def read_child(uri: str, rel: str, listed_in: str) -> bytes | None:
    """The bytes of `rel` (a name read from an artifact) under the trusted `uri`, or None if it does not exist."""
    return _read_at(*locate(uri, rel, listed_in))


READ_TRIES = 3  # tries of one GET before the store is called unavailable


def _read_at(fs: pafs.FileSystem, path: str, uri: str) -> bytes | None:
    """One object's bytes, None if absent; a failed GET is tried again.

    A small object rewritten or removed while it is read (a lease, a run record) can fail mid-body (the AWS SDK's
    "Failed to flush response stream"); so can a store under load. Neither is the user's fault, and the next GET
    sees the new version or its absence.
    """
    for attempt in range(READ_TRIES):
        try:
            with fs.open_input_stream(path) as handle:
                data = handle.read()
            break
        except FileNotFoundError:
            return None
        except OSError as exc:
            if attempt == READ_TRIES - 1 or _unreachable(exc):  # the AWS SDK has already retried a refused connection
                raise StoreUnavailableError(f"{uri}: object store request failed ({_first_line(exc)})") from None
            time.sleep(0.05 * (attempt + 1))
    _BYTES_READ[0] += len(data)
    return data


def write_json(uri: str, payload: Any) -> None:
    write_bytes(uri, json.dumps(payload, indent=1, sort_keys=True, default=str).encode())


JSON_READS = 3  # tries before an object that does not parse is called corrupt


def read_json(uri: str) -> Any | None:
    """Parsed JSON at `uri`, None if absent, CorruptArtifactError if it is not JSON.

    A rewritten object (a run record while its run goes on) can come back torn: pyarrow sizes an S3 object
    with a HEAD, then GETs that many bytes, and a newer, longer version in between is cut at the old size.
    So a read that does not parse is tried again; only one that keeps failing is corrupt.
    """
    for attempt in range(JSON_READS):
        data = read_bytes(uri)
        if data is None:
            return None
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if attempt == JSON_READS - 1:
                raise CorruptArtifactError(f"{uri}: not valid JSON ({exc})") from None
            time.sleep(0.05 * (attempt + 1))
    return None


def list_dir(uri: str) -> list[pafs.FileInfo]:
    """The direct children of a prefix (empty if it does not exist)."""
    fs, path = resolve(uri)
    with store_errors(uri):
        return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def etag(uri: str) -> tuple[int, str] | None:
    """(size, ETag) of an object from one HEAD request (no body), or None if absent or the store has no ETag.

    An S3 ETag is derived from the object's content (MD5 of it, or of its parts): a rewrite changes it.
    """
    return _etag_at(*resolve(uri), uri)


def _etag_at(fs: pafs.FileSystem, path: str, uri: str) -> tuple[int, str] | None:
    with store_errors(uri):
        try:
            with fs.open_input_file(path) as handle:
                meta = handle.metadata()
                size = handle.size()
        except FileNotFoundError:
            return None
    tag = meta.get("ETag") if meta is not None else None
    return (size, tag.decode().strip('"')) if tag else None


def describe_object(uri: str) -> dict[str, Any]:
    """A manifest entry for an object already in the store (bytes, sha256, ETag; rows and schema of Parquet).

    Streams the object once; run it where the data may flow (a worker), not in a driver.
    """
    fs, path = resolve(uri)
    digest, size = hashlib.sha256(), 0
    with store_errors(uri), fs.open_input_stream(path) as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            size += len(block)
    entry: dict[str, Any] = {"bytes": size, "sha256": digest.hexdigest()}
    if uri.endswith(".parquet"):
        with store_errors(uri), fs.open_input_file(path) as handle:
            meta = pq.ParquetFile(handle).metadata
        entry.update(rows=meta.num_rows, schema=str(meta.schema.to_arrow_schema()))
    stamp(entry, uri)
    return entry


def delete_prefix(uri: str) -> None:
    """Remove every object under a prefix (idempotent)."""
    fs, path = resolve(uri)
    with store_errors(uri), contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


# ----------------------------------------------------------------------------- commit protocol


@dataclass(frozen=True)
class Committed:
    """A committed attempt: where it is and what its manifest says."""

    uri: str
    manifest: dict[str, Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()


def new_attempt_id() -> str:
    """Sortable by start time, unique per writer."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def upload_dir(local: Path, uri: str, extra: dict[str, Any] | None = None, *, attempt: str | None = None,
               uploaded: Mapping[str, dict[str, Any]] | None = None, schemas: Iterable[str] = (),
               token: str | None = None, check: Callable[[dict[str, Any]], None] | None = None) -> tuple[Committed, int]:
    """Upload a finished local directory as a new attempt under `uri`, manifest last; return it and bytes sent.

    `uploaded` lists objects helpers already put into `attempt` (rel -> entry, see core/storage/sink.py): the manifest
    names them beside the local files, and their bytes count as sent. `token`: the object `attempt/.shardwalk-token`
    written when the attempt began must still hold it (else the attempt was deleted mid-stage and is not
    committed); `check(manifest)` may refuse the manifest before it is written.
    """
    attempt = attempt or join(uri, ATTEMPTS, new_attempt_id())
    manifest = build_manifest(local, {**(extra or {}), "attempt": attempt, "committed_at": time.time()})
    fs, root = resolve(attempt)
    sent = 0
    with store_errors(attempt):
        for rel in manifest["files"]:
            with open(local / rel, "rb") as src, fs.open_output_stream(f"{root}/{rel}") as out:
                while block := src.read(CHUNK):
                    out.write(block)
                    sent += len(block)
            stamp(manifest["files"][rel], join(attempt, rel))
        for rel, entry in (uploaded or {}).items():
            manifest["files"][safe_rel(attempt, rel)] = dict(entry)
            manifest["rows"] += int(entry.get("rows", 0))
            sent += int(entry.get("bytes", 0))
        manifest["schemas"] = sorted({*manifest["schemas"], *schemas})
        if check is not None:
            check(manifest)
        if token is not None and read_bytes(join(attempt, TOKEN)) != token.encode():
            raise CommitRefusedError(f"{attempt}: the attempt was deleted while its stage ran (its token is gone); "
                                     "nothing is committed")
        manifest = seal(manifest)
        write_json(join(attempt, MANIFEST), manifest)
    return Committed(attempt, manifest), sent


def stamp(entry: dict[str, Any], uri: str) -> None:
    """Record the store's ETag of a just-uploaded object in its manifest entry (cache hits compare it)."""
    found = etag(uri)
    if found is not None and found[0] == entry.get("bytes"):
        entry["etag"] = found[1]


def _seal_of(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "seal"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with `seal`, the sha256 of its own canonical content: a damaged manifest is not trusted.

    An integrity check, not authentication: the hash is unkeyed, so whoever can write the store can reseal.
    """
    return {**manifest, "seal": _seal_of(manifest)}


def _manifest_of(attempt: str) -> dict[str, Any] | None:
    try:
        manifest = read_json(join(attempt, MANIFEST))
    except CorruptArtifactError:
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return None if "seal" in manifest and manifest["seal"] != _seal_of(manifest) else manifest


def committed_attempts(uri: str) -> list[Committed]:
    """Every committed attempt under `uri`, newest first (`uri` itself if it is a committed attempt)."""
    own = _manifest_of(uri)
    if own is not None:
        return [Committed(uri.rstrip("/"), own)]
    found = []
    for info in list_dir(join(uri, ATTEMPTS)):
        if info.type == pafs.FileType.Directory and is_artifact_name(info.base_name):  # a listed name is data too
            attempt = join(uri, ATTEMPTS, info.base_name)
            manifest = _manifest_of(attempt)
            if manifest is not None:
                found.append(Committed(attempt, manifest))
    return sorted(found, key=lambda c: (c.manifest.get("committed_at", 0), c.uri), reverse=True)


def uncommitted_attempts(uri: str) -> list[str]:
    """Attempts under `uri` that never wrote their manifest (killed or failed writers)."""
    return [join(uri, ATTEMPTS, i.base_name) for i in list_dir(join(uri, ATTEMPTS))
            if i.type == pafs.FileType.Directory and is_artifact_name(i.base_name) and _manifest_of(join(uri, ATTEMPTS, i.base_name)) is None]


def safe_rel(attempt: str, rel: str) -> str:
    """`rel` if the manifest of `attempt` may name it (core/storage/names.py), else CorruptArtifactError."""
    return artifact_name(rel, f"{join(attempt, MANIFEST)}")


def verify_attempt(c: Committed, names: Iterable[str] | None = None) -> None:
    """Stream every (or each named) object and compare size and sha256 with the manifest."""
    for rel in names if names is not None else c.manifest["files"]:
        stream_object(c, rel, None)


def stream_object(c: Committed, rel: str, sink: Any) -> int:
    """Stream one listed object into `sink` (None: just hash it), refused unless its size and sha256 match."""
    entry = c.manifest["files"].get(rel)
    fs, path, uri = locate(c.uri, rel, join(c.uri, MANIFEST))
    if not isinstance(entry, dict):
        raise CorruptArtifactError(f"{uri}: not listed in its manifest")
    digest, size = hashlib.sha256(), 0
    with store_errors(uri):
        try:
            with fs.open_input_stream(path) as handle:
                while block := handle.read(CHUNK):
                    digest.update(block)
                    size += len(block)
                    _BYTES_READ[0] += len(block)
                    if sink is not None:
                        sink.write(block)
        except FileNotFoundError:
            raise CorruptArtifactError(f"{uri}: listed in the manifest but missing") from None
    if digest.hexdigest() != entry.get("sha256") or size != entry.get("bytes", size):
        raise CorruptArtifactError(f"{uri}: checksum does not match its manifest")
    return size


def unchanged_since_commit(c: Committed) -> bool:
    """Every object still has the size and store ETag its manifest recorded (HEAD requests only, no bodies).

    False when any differs, is missing, or the manifest holds no ETag (a store without them): the caller
    then streams and hashes the objects instead.
    """
    entries = c.manifest["files"]
    if not entries or not all(isinstance(e, dict) and e.get("etag") for e in entries.values()):
        return False
    for rel, entry in entries.items():
        if _etag_at(*locate(c.uri, rel, join(c.uri, MANIFEST))) != (entry.get("bytes"), entry["etag"]):
            return False
    return True


def copy_object(c: Committed, rel: str, dest: str) -> None:
    """Copy one committed object to `dest` in the same store, verified: server-side when its size and ETag are
    still those recorded at commit (no bytes pass through this process), else streamed and hashed."""
    entry, (fs, path, src) = c.manifest["files"].get(rel), locate(c.uri, rel, join(c.uri, MANIFEST))
    if isinstance(entry, dict) and entry.get("etag") and _etag_at(fs, path, src) == (entry.get("bytes"), entry["etag"]):
        with store_errors(dest):
            fs.copy_file(path, resolve(dest)[1])
        return
    with tempfile.TemporaryFile() as tmp:
        stream_object(c, rel, tmp)
        tmp.seek(0)
        write_bytes(dest, tmp.read())


def find_committed(uri: str, *, verify: bool = True) -> Committed | None:
    """The newest committed attempt whose objects all match; corrupt ones are uncommitted on the way.

    An attempt whose objects all keep the size and ETag recorded at commit is trusted without reading them
    (the sha256 is checked wherever the bytes are loaded); otherwise every object is streamed and hashed.
    """
    for c in committed_attempts(uri):
        if not verify or unchanged_since_commit(c):
            return c
        try:
            verify_attempt(c)
        except CorruptArtifactError:
            with contextlib.suppress(OSError):  # a corrupt attempt is never trusted again; gc removes it
                resolve(c.uri)[0].delete_file(resolve(join(c.uri, MANIFEST))[1])
            continue
        return c
    return None


def require_committed(uri: str) -> Committed:
    """The newest committed attempt under `uri`, or a DataError naming it."""
    attempts = committed_attempts(uri)
    if not attempts:
        raise DataError(f"{uri}: no committed output there (no {MANIFEST} manifest)")
    return attempts[0]


# ----------------------------------------------------------------------------- sealed JSON (local or store)


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
    sealed = {**payload, SEAL: _seal_digest(payload)}
    if is_remote(path):
        write_json(os.fspath(path), sealed)
    else:
        files.write_json_atomic(path, sealed)


def read_json_sealed(path: str | os.PathLike, what: str, hint: str = "") -> dict[str, Any]:
    """A JSON object written by `write_json_sealed`; CorruptArtifactError if it was edited or damaged.

    A checkpoint's metadata decides where a resumed computation goes on; an edited `node` would otherwise
    be resumed from silently. `hint` tells the user how to recover (appended to the message).
    """
    missing = CorruptArtifactError(f"{path}: {what} is missing")
    try:
        found = read_json(os.fspath(path)) if is_remote(path) else files.read_json(path, missing, what)
    except CorruptArtifactError as exc:
        raise CorruptArtifactError(f"{exc}{hint}") from None
    if found is None:
        raise CorruptArtifactError(f"{missing}{hint}")
    if not isinstance(found, dict) or found.get(SEAL) != _seal_digest(found):
        raise CorruptArtifactError(f"{path}: {what} does not match its checksum (edited or damaged){hint}")
    return {k: v for k, v in found.items() if k != SEAL}
