"""One spelling per storage location, so two spellings of the same runs dir are recognised as one.

`s3://bkt/runs` (endpoint from AWS_ENDPOINT_URL), `s3://bkt/runs/` and
`s3://bkt/runs?endpoint_override=127.0.0.1:9000&scheme=http` name the same objects: their canonical form is
`s3://bkt/runs` (scheme, bucket and key; the endpoint and other options are how to reach it, not where it is).
A local path or file:// URI becomes its absolute path with symlinks and `..` resolved.
"""

from __future__ import annotations

import os

from shardwalk.core.storage import store

SCHEME_OF = {"gcs": "gs"}  # pyarrow's filesystem type name -> the URI scheme users write


def canonical(location: str | os.PathLike) -> str:
    """The endpoint-independent form of a path or URI (ConfigError for an unknown scheme or no bucket)."""
    text = os.fspath(location)
    if not store.is_remote(text):
        return os.path.realpath(store.local_path(text))
    fs, path = store.resolve(text)
    scheme = SCHEME_OF.get(fs.type_name, fs.type_name)
    return f"{scheme}://{path.strip('/')}"


def same_location(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two spellings name the same place."""
    return canonical(a) == canonical(b)


def contains(parent: str | os.PathLike, child: str | os.PathLike) -> bool:
    """Whether `child` is `parent` or lies under it (compared canonically)."""
    outer, inner = canonical(parent), canonical(child)
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")
