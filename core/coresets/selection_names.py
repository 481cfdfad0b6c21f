"""The selection grammar in one place: method names (`ccs-aum-cb`), table names (`ccs-aum-cb-keep0.1`), and reading one back.

Pipelines, workers, the demo and the benchmarks all name coresets through these functions, so a name
written by one is found by the others (docs/design.md "Coreset pipeline").
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from shardwalk.core.coresets.scores import HARD_HIGH
from shardwalk.core.errors import ConfigError
from shardwalk.core.storage.sources import read_table

METHODS = ("ccs", "random", "topk", "d2")  # rs2 is a sampler (shardwalk.core.coresets.single_process.rs2_epoch), not a selection
GRAMMAR = "ccs-SCORE[-cb|-auto], d2-SCORE[-cb], topk-SCORE[-easy][-cb], random[-cb]"
AUTO = "auto"  # `class_balanced` of a `ccs-SCORE-auto` method: plain or class-balanced, chosen per rate by β tuning


def check_method_name(method: Any, name: Any = None) -> str:
    """A bare selection method (ccs, random, topk, d2); the message shows the whole grammar."""
    if method not in METHODS:
        raise ConfigError(f"unknown selection method '{method if name is None else name}'; use {GRAMMAR}")
    return str(method)


def parse_method(name: str) -> dict[str, Any]:
    """`ccs-aum-cb` → {method: ccs, score: aum, class_balanced: True}; ConfigError on unknown parts.

    `ccs-aum-auto` → class_balanced `AUTO`: β tuning chooses plain or class-balanced CCS per rate.
    """
    parts = str(name).split("-")
    method, rest = check_method_name(parts[0], name), parts[1:]
    if AUTO in rest and (method != "ccs" or "cb" in rest):
        raise ConfigError(f"selection method '{name}': '-auto' (class balance chosen by β tuning) is for ccs-SCORE-auto only")
    out: dict[str, Any] = {"method": method, "class_balanced": AUTO if AUTO in rest else "cb" in rest}
    rest = [r for r in rest if r not in ("cb", AUTO)]
    if method == "topk" and "easy" in rest:
        out["hardest"] = False
        rest = [r for r in rest if r != "easy"]
    if method == "random":
        if rest:
            raise ConfigError(f"selection method '{name}': random takes no score")
        return out
    if len(rest) != 1 or rest[0] not in HARD_HIGH:
        raise ConfigError(f"selection method '{name}': name one score from {sorted(HARD_HIGH)}")
    out["score"] = rest[0]
    return out


def check_method(method: Any, score: str | None) -> None:
    """A selection request's method (and its score): the same checks as the grammar, for dict requests."""
    check_method_name(method)
    if method != "random" and score is None:
        raise ConfigError(f"selection method '{method}' needs a score name")


def selection_name(
    method: str, keep: float, score: str | None = None, class_balanced: bool | str = False, beta: float | None = None
) -> str:
    """The table name of one selection, e.g. `ccs-aum-cb-keep0.1` (`-beta0.2` when β is given explicitly)."""
    balance = [AUTO] if class_balanced == AUTO else ["cb"] if class_balanced else []
    parts = [method] + ([score] if score and method != "random" else []) + balance
    return "-".join(parts) + f"-keep{keep:g}" + (f"-beta{beta:g}" if beta is not None else "")


def method_selection_name(method_name: str, keep: float) -> str:
    """The table name the coreset stages give a grammar name at one rate (`ccs-aum`, 0.3 → `ccs-aum-keep0.3`)."""
    spec = parse_method(method_name)
    return selection_name(spec["method"], float(keep), spec.get("score"), spec["class_balanced"])


def read_selection(directory: str | os.PathLike) -> np.ndarray:
    """All selected ids of one selection directory, sorted (small: the coreset, not the data)."""
    return np.sort(read_table(directory, ["id"]).column("id").to_numpy())
