"""Content-addressed stage keys: hash(stage name, stage version, canonical params, upstream keys)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from core.errors import ConfigError


def canonical(value: Any, where: str = "params") -> Any:
    """A JSON-stable form of a parameter value: sorted mappings, lists for tuples, exact float text."""
    if isinstance(value, Mapping):
        return {str(k): canonical(v, f"{where}.{k}") for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}: parameter must be finite, got {value}")
        return {"float": value.hex()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return canonical(value.item(), where)
    raise ConfigError(f"{where}: parameter of type {type(value).__name__} cannot be part of a cache key")


def stage_key(name: str, version: str, params: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    """The sha256 hex key of one stage; equal keys mean interchangeable outputs."""
    payload = {
        "name": name,
        "version": version,
        "params": canonical(params, f"stage '{name}'"),
        "upstream": dict(sorted(upstream.items())),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
