"""SRRW token checkpoints, on a local disk or an object store (docs/design.md, Distributed SRRW).

A checkpoint of token K is its arrays as `.npy` files (written first), then `token-K.json` naming them
with their sha256, sealed by the digest of its own content and written last in one atomic step (a rename
or one PUT), so a reader sees the old checkpoint or the new one, never a mix. Older arrays of the token
are deleted after. Loading verifies the seal and every checksum, so neither an edited field nor a damaged
array is resumed from.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from shardwalk.core.errors import CorruptArtifactError
from shardwalk.core.srrw.token import Token
from shardwalk.core.storage import store
from shardwalk.core.storage.files import check_checksums, confined
from shardwalk.core.storage.store import read_json_sealed, write_json_sealed


def checkpoint_hint(directory: str | Path) -> str:
    """How to recover from a damaged checkpoint: appended to every error about one."""
    return f"; delete {directory} (or rerun the stage with --force) to start the walk from scratch"


def _array_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _write_array(directory: str, name: str, data: bytes) -> None:
    """One array file: a PUT on a store, written then renamed on a local disk."""
    if store.is_remote(directory):
        store.write_bytes(store.join(directory, name), data)
        return
    final = Path(directory) / name
    tmp = final.with_name(f".{name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(final)


def _listing(directory: str) -> list[str]:
    if store.is_remote(directory):
        return [info.base_name for info in store.list_dir(directory)]
    return [p.name for p in Path(directory).iterdir()]


def _delete(directory: str, name: str) -> None:
    if store.is_remote(directory):
        fs, path = store.resolve(store.join(directory, name))
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(path)
    else:
        (Path(directory) / name).unlink(missing_ok=True)


def _manifest(directory: str, key: int) -> str | Path:
    name = f"token-{key}.json"
    return store.join(directory, name) if store.is_remote(directory) else Path(directory) / name


def save_token(directory: str | Path, token: Token) -> str | Path:
    """Checkpoint `token` under `directory` (a local path or a store URI); returns its manifest's path or URI."""
    directory = str(directory)
    if not store.is_remote(directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
    meta, arrays = token.state()
    files = {}
    for name, arr in arrays.items():
        data = _array_bytes(arr)
        obj = f"token-{token.key}-n{token.n:010d}-{name}.npy"
        _write_array(directory, obj, data)
        files[name] = {"file": obj, "sha256": hashlib.sha256(data).hexdigest()}
    meta["files"] = files
    manifest = _manifest(directory, token.key)
    write_json_sealed(manifest, meta)
    keep = {f["file"] for f in files.values()}
    for name in _listing(directory):  # older checkpoints of this token
        if name.startswith(f"token-{token.key}-n") and name.endswith(".npy") and name not in keep:
            _delete(directory, name)
    return manifest


def _read_arrays(directory: str, meta: dict[str, Any], manifest: str | Path, hint: str) -> dict[str, np.ndarray]:
    """The arrays a manifest names, each verified against its sha256 (paths confined to `directory`)."""
    files = meta["files"]
    listed_in = f"token checkpoint {Path(manifest).name}"
    if not store.is_remote(directory):
        arrays = {}
        for name, entry in files.items():
            path = confined(directory, entry["file"], listed_in)
            try:
                check_checksums(Path(directory), {entry["file"]: entry["sha256"]}, listed_in)
            except CorruptArtifactError:
                raise CorruptArtifactError(f"{path}: missing or checksum does not match {Path(manifest).name}{hint}") from None
            arrays[name] = np.load(path, allow_pickle=False)
        return arrays
    arrays = {}
    for name, entry in files.items():
        if not isinstance(entry["file"], str) or "/" in entry["file"]:  # a checkpoint's arrays sit beside it
            raise CorruptArtifactError(f"{manifest}: names an unsafe object {str(entry['file'])[:200]!r}{hint}")
        obj = store.join(directory, entry["file"])
        try:
            data = store.read_child(directory, entry["file"], f"{manifest}")
        except CorruptArtifactError as exc:
            raise CorruptArtifactError(f"{exc}{hint}") from None
        if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CorruptArtifactError(f"{obj}: missing or checksum does not match {Path(manifest).name}{hint}")
        arrays[name] = np.load(io.BytesIO(data), allow_pickle=False)
    return arrays


def load_token(directory: str | Path, key: int) -> Token | None:
    """The last checkpoint of token `key` under `directory` (None if there is none), fully verified."""
    directory = str(directory)
    manifest = _manifest(directory, key)
    exists = store.read_bytes(str(manifest)) is not None if store.is_remote(directory) else Path(manifest).is_file()
    if not exists:
        return None
    hint = checkpoint_hint(directory)
    meta: Any = read_json_sealed(manifest, "token checkpoint", hint)
    try:
        return Token.from_state(meta, _read_arrays(directory, meta, manifest, hint))
    except CorruptArtifactError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CorruptArtifactError(f"{manifest}: unreadable token checkpoint ({exc}){hint}") from None

