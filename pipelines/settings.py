"""A run's settings as people compare them: flattened keys, and which differ from the pipeline's defaults.

The defaults come from this package's own registry (`pipelines.PIPELINES`): a record's `pipeline` field is
only looked up there, never imported as a module name, so a record written by a stranger chooses no code.
"""

from __future__ import annotations

import importlib
import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from shardwalk.pipelines import PIPELINES

MISSING = object()  # a key the pipeline's defaults do not have (another version's, or a module of your own)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys (`graph.name`), leaves as they are."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def pipeline_defaults(pipeline: Any) -> dict[str, Any] | None:
    """The flattened, JSON-shaped DEFAULTS of a registered pipeline; None for any other name."""
    if not isinstance(pipeline, str) or pipeline not in PIPELINES:
        return None
    defaults = importlib.import_module(PIPELINES[pipeline]).DEFAULTS
    return flatten(json.loads(json.dumps(defaults, default=str)))


def settings_rows(record: dict[str, Any]) -> list[tuple[str, Any, Any, bool]]:
    """(key, value, default or MISSING, differs) for every setting of a run, those that differ first."""
    config = record.get("config")
    if not isinstance(config, dict):
        return []
    defaults = pipeline_defaults(record.get("pipeline"))
    rows = []
    for key, value in flatten(config).items():
        default = MISSING if defaults is None else defaults.get(key, MISSING)
        rows.append((key, value, default, defaults is not None and default != value))
    return sorted(rows, key=lambda r: not r[3])


def changed_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run that differ from its pipeline's defaults (all of them for an unknown pipeline)."""
    rows = settings_rows(record)
    if rows and pipeline_defaults(record.get("pipeline")) is None:
        return {key: value for key, value, _, _ in rows}
    return {key: value for key, value, _, changed in rows if changed}


def run_warnings(record: dict[str, Any]) -> list[str]:
    """Every warning a run recorded: a stage's own (`warning`) and results not to trust (`metrics.warning`)."""
    found = []
    for name, stage in (record.get("stages") or {}).items():
        if not isinstance(stage, dict):
            continue
        for text in (stage.get("warning"), (stage.get("metrics") or {}).get("warning")):
            if isinstance(text, str) and text:
                found.append(f"stage '{name}': {text}")
    return found


def shardwalk_version() -> str:
    """The installed distribution's version (the wheel's), else `unknown` (a bare checkout on the path)."""
    try:
        return version("shardwalk")
    except PackageNotFoundError:
        return "unknown"
