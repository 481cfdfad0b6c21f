"""Content-addressed stage keys: hash(stage name, version, code, canonical params, input files, upstream keys).

Pure: the digests of a stage's code and of the files its parameters name are computed by core/dag/fingerprint.py
and passed in, so equal arguments always give equal keys. A key is the digest of its named parts
(`key_parts`); run records keep the parts so `shardwalk show` can say which one changed on a cache miss.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

from shardwalk.core.errors import ConfigError

INPUT_PART = "input "  # key part names: "version", "code", "params", "input <param path>", "upstream <arg>"
UPSTREAM_PART = "upstream "


class InputPath(str):
    """A parameter that names an input file, directory or URI: what it holds is part of the cache key.

    Declare path parameters with it in a pipeline's DEFAULTS (`"edges": InputPath("")`): pipelines/config.py
    keeps the type on every value given for them, and `Pipeline.keys` fingerprints each one it finds.
    """

    __slots__ = ()


def canonical(value: Any, where: str = "params") -> Any:
    """A JSON-stable form of a parameter value: sorted mappings, lists for tuples, exact float text."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v, f"{where}.{k}") for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: parameter must be finite, got {value}")
        return {"float": value.hex()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return canonical(value.item(), where)
    raise ConfigError(f"{where}: parameter of type {type(value).__name__} cannot be part of a cache key")


def input_paths(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted parameter path, value) of every non-empty `InputPath` in `params`, nested tables and lists included."""
    for key, value in params.items():
        where = f"{prefix}{key}"
        if isinstance(value, InputPath):
            if value:
                yield where, str(value)
        elif isinstance(value, Mapping):
            yield from input_paths(value, f"{where}.")
        elif isinstance(value, list | tuple):
            yield from input_paths({str(i): v for i, v in enumerate(value)}, f"{where}.")


def absolute_inputs(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with every relative local `InputPath` made absolute against this process's folder: a stage runs
    in its worker's folder, which on a joined cluster is where `ray start` ran, not where you typed the path."""

    def absolute(value: Any) -> Any:
        if isinstance(value, InputPath):
            local = value and "://" not in value and not value.startswith("builtin:") and not os.path.isabs(value)
            return InputPath(os.path.abspath(value)) if local else value
        if isinstance(value, Mapping):
            return {k: absolute(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(absolute(v) for v in value)
        return value

    return {k: absolute(v) for k, v in params.items()}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def key_parts(name: str, version: str, params: Mapping[str, Any], upstream: Mapping[str, str], code: str = "",
              inputs: Mapping[str, str] | None = None) -> dict[str, str]:
    """The named digests a stage key is made of: version, code, params, each input file, each upstream key."""
    parts = {"version": version, "code": code, "params": _digest(canonical(params, f"stage '{name}'"))}
    parts |= {f"{INPUT_PART}{where}": digest for where, digest in sorted((inputs or {}).items())}
    parts |= {f"{UPSTREAM_PART}{arg}": key for arg, key in sorted(upstream.items())}
    return parts


def key_of(name: str, parts: Mapping[str, str]) -> str:
    """The sha256 hex key of a stage from its parts; equal keys mean interchangeable outputs."""
    return _digest({"name": name, "parts": dict(parts)})


def stage_key(name: str, version: str, params: Mapping[str, Any], upstream: Mapping[str, str], code: str = "",
              inputs: Mapping[str, str] | None = None) -> str:
    """The sha256 hex key of one stage; equal keys mean interchangeable outputs."""
    return key_of(name, key_parts(name, version, params, upstream, code, inputs))


def changed_parts(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """The key parts that differ between two computations of one stage's key (added or removed ones too)."""
    return [p for p in list(now) + [p for p in before if p not in now] if before.get(p) != now.get(p)]
