"""Pipeline configuration: defaults, a TOML file, then `--set key=value` overrides, checked once."""

from __future__ import annotations

import copy
import importlib
import os
from importlib import resources
from types import ModuleType
from typing import Any

from shardwalk.core.dag.cache_key import InputPath
from shardwalk.core.errors import ConfigError
from shardwalk.pipelines import PIPELINES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def pipeline_module(name: str) -> ModuleType:
    """The driver module of a registered pipeline, or of your own importable `package.module`."""
    if name in PIPELINES:
        return importlib.import_module(PIPELINES[name])
    if name.replace(".", "").replace("_", "").isalnum():
        try:
            module = importlib.import_module(name)
        except ImportError:
            module = None
        if module is not None and all(hasattr(module, a) for a in ("DEFAULTS", "validate", "build")):
            return module
    raise ConfigError(
        f"unknown pipeline '{name}'; choose from {', '.join(sorted(PIPELINES))} "
        "or give an importable module defining DEFAULTS, validate and build"
    )


def parse_value(text: str) -> Any:
    """A `--set` value: a TOML literal (1, 0.5, true, [0.1, 0.3], "s") or else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_assignment(item: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (['a', 'b'], value)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    path = key.split(".")
    if any(not part for part in path):
        raise ConfigError(f"--set key {key!r} has an empty part")
    return path, parse_value(value.strip())


def _coerce(key: str, default: Any, value: Any) -> Any:
    if isinstance(default, InputPath) and isinstance(value, str):
        return InputPath(value)  # a file or URI: what it holds becomes part of the cache key
    if isinstance(default, str) and default == "auto":
        return value  # "auto" or an explicit value (true, 0.2 …): the pipeline's validate checks which
    if isinstance(default, bool) or isinstance(value, bool):
        if isinstance(default, bool) and isinstance(value, bool):
            return value
    elif isinstance(default, float) and isinstance(value, int | float):
        return float(value)
    elif (isinstance(default, int) and isinstance(value, int)) or (isinstance(default, str) and isinstance(value, str)) or (isinstance(default, list) and isinstance(value, list)) or default is None:
        return value
    raise ConfigError(f"config key '{key}' expects {type(default).__name__}, got {value!r}")


def _apply(config: dict[str, Any], path: list[str], value: Any, origin: str) -> None:
    node = config
    for i, part in enumerate(path):
        dotted = ".".join(path[: i + 1])
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else ""
            raise ConfigError(f"{origin}: unknown config key {dotted!r} (known: {known})")
        if i == len(path) - 1:
            if isinstance(node[part], dict) and isinstance(value, bool) and "enabled" in node[part]:
                node[part]["enabled"] = value  # `--set knn_graph=false` switches a table with an `enabled` key
            elif isinstance(node[part], dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"{origin}: config key '{dotted}' is a table")
                for sub, subvalue in value.items():
                    _apply(node[part], [sub], subvalue, f"{origin} [{dotted}]")
            else:
                node[part] = _coerce(dotted, node[part], value)
        else:
            node = node[part]


def _relative_to(config_file: str | os.PathLike, default: Any, value: Any) -> Any:
    """A relative local path given in a config file for a path setting (an `InputPath` in DEFAULTS, in any
    table) means: next to that file."""
    if isinstance(default, dict) and isinstance(value, dict):
        return {k: _relative_to(config_file, default.get(k), v) for k, v in value.items()}
    if not isinstance(default, InputPath) or not isinstance(value, str) or not value or "://" in value or value.startswith("builtin:"):
        return value
    if os.path.isabs(value):
        return value
    return os.path.join(os.path.dirname(os.path.abspath(config_file)), value)


EXAMPLE_PREFIX = "example:"


def example_names() -> list[str]:
    """The sample configs shipped inside the package (`pipelines/examples/*.toml`)."""
    return sorted(p.name[:-5] for p in resources.files("shardwalk.pipelines").joinpath("examples").iterdir() if p.name.endswith(".toml"))


def resolve_config_file(config_file: str | os.PathLike) -> str | os.PathLike:
    """`example:NAME` names a shipped sample config, so it works from any folder; anything else is a path."""
    text = os.fspath(config_file)
    if not text.startswith(EXAMPLE_PREFIX):
        return config_file
    name = text[len(EXAMPLE_PREFIX):]
    if name not in example_names():
        raise ConfigError(f"{text}: no such example (known: {', '.join(example_names())})")
    return str(resources.files("shardwalk.pipelines").joinpath("examples", f"{name}.toml"))


def load_config(module: ModuleType, config_file: str | os.PathLike | None, overrides: list[str]) -> dict[str, Any]:
    """Defaults ← TOML file ← --set overrides, then the pipeline's own range checks."""
    config = copy.deepcopy(module.DEFAULTS)
    if config_file is not None:
        config_file = resolve_config_file(config_file)
        try:
            with open(config_file, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"{config_file}: cannot read config ({exc.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_file}: malformed TOML ({exc})") from None
        for key, value in data.items():
            _apply(config, [key], _relative_to(config_file, config.get(key), value), os.fspath(config_file))
    for item in overrides:
        path, value = parse_assignment(item)
        _apply(config, path, value, "--set")
    module.validate(config)
    return config
