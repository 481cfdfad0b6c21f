"""SRRW token checkpoints on an object store: the same files as core.srrw.save_token, one PUT each.

Arrays are written first, then `token-K.json` naming them with sha256 (one PUT, so a reader sees the old
checkpoint or the new one); older arrays of the token are deleted after. Loading verifies every checksum.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from typing import Any

import numpy as np

from core import store
from core.errors import CorruptArtifactError
from core.io import read_json_sealed, write_json_sealed
from core.srrw import Token, checkpoint_hint


def save_token(uri: str, token: Token) -> str:
    """Checkpoint `token` under the prefix `uri`; returns its manifest's URI."""
    meta, arrays = token.state()
    files = {}
    for name, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        data = buf.getvalue()
        obj = f"token-{token.key}-n{token.n:010d}-{name}.npy"
        store.write_bytes(store.join(uri, obj), data)
        files[name] = {"file": obj, "sha256": hashlib.sha256(data).hexdigest()}
    meta["files"] = files
    manifest = store.join(uri, f"token-{token.key}.json")
    write_json_sealed(manifest, meta)  # sealed like a local checkpoint: an edited field is refused
    keep = {f["file"] for f in files.values()}
    for info in store.list_dir(uri):  # older checkpoints of this token
        if info.base_name.startswith(f"token-{token.key}-n") and info.base_name not in keep:
            _delete(store.join(uri, info.base_name))
    return manifest


def _delete(uri: str) -> None:
    fs, path = store.resolve(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def load_token(uri: str, key: int) -> Token | None:
    """The last checkpoint of token `key` under `uri` (None if there is none); checksums verified."""
    manifest = store.join(uri, f"token-{key}.json")
    if store.read_bytes(manifest) is None:
        return None
    hint = checkpoint_hint(uri)
    meta: Any = read_json_sealed(manifest, "token checkpoint", hint)
    try:
        arrays = {}
        for name, entry in meta["files"].items():
            if not isinstance(entry["file"], str) or "/" in entry["file"] or entry["file"].startswith("."):
                raise CorruptArtifactError(f"{manifest}: names an unsafe object {entry['file']!r}{hint}")
            obj = store.join(uri, entry["file"])
            data = store.read_bytes(obj)
            if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise CorruptArtifactError(f"{obj}: missing or checksum does not match token-{key}.json{hint}")
            arrays[name] = np.load(io.BytesIO(data), allow_pickle=False)
        return Token.from_state(meta, arrays)
    except CorruptArtifactError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CorruptArtifactError(f"{manifest}: unreadable token checkpoint ({exc}){hint}") from None


def save_checkpoint(directory: str, token: Token) -> None:
    """Checkpoint to a local directory or a store prefix, whichever `directory` names."""
    if store.is_remote(directory):
        save_token(directory, token)
    else:
        from core.srrw import save_token as save_local

        save_local(directory, token)


def load_checkpoint(directory: str, key: int) -> Token | None:
    if store.is_remote(directory):
        return load_token(directory, key)
    from core.srrw import load_token as load_local

    return load_local(directory, key)
